"""Pure feature code: numpy arrays in, frozen dataclasses out. No I/O, no globals."""
