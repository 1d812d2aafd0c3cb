"""gunicorn's uvicorn worker on ferroloop: `gunicorn -k ferroloop_worker.FerroloopWorker`
(python/tests/test_gunicorn.py; the README shows the same class)."""

from uvicorn_worker import UvicornWorker


class FerroloopWorker(UvicornWorker):
    CONFIG_KWARGS = {"loop": "ferroloop:new_event_loop"}
