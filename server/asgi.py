"""ASGI entry for uvicorn/gunicorn: `uvicorn --factory server.asgi:create_app_from_env`."""

from fastapi import FastAPI

from server.app import create_app
from server.settings import Settings


def create_app_from_env() -> FastAPI:
    return create_app(Settings.from_env())
