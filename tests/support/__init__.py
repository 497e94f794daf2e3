"""Test support: throwaway services (a PostgreSQL server, a Dask cluster) that the tests and
the cluster benchmark start on 127.0.0.1."""
