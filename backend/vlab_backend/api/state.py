"""Objects shared by the request handlers, and the dependencies that hand them out."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from vlab_backend.auth import AuthError, TokenService
from vlab_backend.config import Settings
from vlab_backend.events import EventHub
from vlab_backend.ratelimit import LoginThrottle
from vlab_backend.scheduler import Scheduler
from vlab_backend.store.database import Database
from vlab_backend.store.schema import User


@dataclass
class AppState:
    settings: Settings
    db: Database
    tokens: TokenService
    hub: EventHub
    scheduler: Scheduler
    login_throttle: LoginThrottle = field(default_factory=LoginThrottle)


async def get_state(request: Request) -> AppState:
    """Async, so that handing out the state takes no thread from the pool."""
    state: AppState = request.app.state.vlab
    return state


def db_session(state: Annotated[AppState, Depends(get_state)]) -> Iterator[Session]:
    """The request's session: committed when the route returns, rolled back if it raises."""
    with state.db.session() as session:
        yield session


_bearer = HTTPBearer(auto_error=False)


def current_user(state: Annotated[AppState, Depends(get_state)],
                 credentials: Annotated[HTTPAuthorizationCredentials | None,
                                        Depends(_bearer)]) -> User:
    """The caller. A session of its own, closed at once: an upload that streams in for
    minutes holds no database connection."""
    if credentials is None:
        raise HTTPException(401, "authentication required: send 'Authorization: Bearer <token>'",
                            headers={"WWW-Authenticate": "Bearer"})
    with state.db.session() as session:
        try:
            return state.tokens.authenticate(session, credentials.credentials)
        except AuthError as exc:
            raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from exc


def admin_user(user: Annotated[User, Depends(current_user)]) -> User:
    if not user.is_admin:
        raise HTTPException(403, "this action needs an administrator")
    return user


StateDep = Annotated[AppState, Depends(get_state)]
# Scope "function": the commit happens before the answer is sent, so a client that reads
# right after a write sees it (the default scope would commit after the response).
SessionDep = Annotated[Session, Depends(db_session, scope="function")]
UserDep = Annotated[User, Depends(current_user)]
AdminDep = Annotated[User, Depends(admin_user)]
