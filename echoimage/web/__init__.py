"""The web page and the JSON API of `echoimage serve` (FastAPI + uvicorn).

`echoimage.web.app.create_app(settings)` builds the application and
`echoimage.web.app.serve(settings, host, port)` runs it.
"""
