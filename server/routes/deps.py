"""Dependencies that hand routes the app's service and settings."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from server.service import SoundscapeService
from server.settings import Settings


# async: FastAPI runs a plain `def` dependency in the thread pool, a hop per request (~0.3 ms).
async def _service(request: Request) -> SoundscapeService:
    return request.app.state.service


async def _settings(request: Request) -> Settings:
    return request.app.state.settings


ServiceDep = Annotated[SoundscapeService, Depends(_service)]
SettingsDep = Annotated[Settings, Depends(_settings)]
