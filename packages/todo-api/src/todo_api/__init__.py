"""todo_api: the reference FastAPI service on neondb.

Per-user tasks and chat history (conversations and messages) behind bearer-token auth.
`todo_api.app:create_app` is the application factory (uvicorn runs it with `factory=True`);
nothing here reads the environment or connects at import time.
"""

from todo_api.app import create_app
from todo_api.settings import AppSettings

__all__ = ["AppSettings", "create_app"]
