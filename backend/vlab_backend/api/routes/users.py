"""Login and token refresh (with the dAIEdge client's field names), and API tokens."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request
from sqlalchemy import select

from vlab_backend.api.deps import get_token_or_404
from vlab_backend.api.schemas import (
    ERRORS,
    AccessToken,
    ApiTokenInfo,
    ApiTokenRevoked,
    LoginBody,
    LoginTokens,
    Me,
    NewApiToken,
    RefreshBody,
    TokenBody,
)
from vlab_backend.api.state import SessionDep, StateDep, UserDep
from vlab_backend.api.views import token_info
from vlab_backend.auth import AuthError, check_login_async, create_api_token
from vlab_backend.store.schema import ApiToken, User

router = APIRouter(tags=["users"], responses=ERRORS)


@router.post("/api/users/login")
async def login(body: LoginBody, request: Request, state: StateDep) -> LoginTokens:
    # Async, the password checked on threads of its own: a login storm queues there instead
    # of taking the thread pool that the synchronous handlers share.
    email = body.email.strip().lower()
    # The peer as uvicorn reports it: forwarded only by a proxy named in --forwarded-allow-ips.
    address = request.client.host if request.client else "?"
    wait = state.login_throttle.attempt(email, address)
    if wait:
        raise HTTPException(429, f"too many failed logins; try again in {wait} s",
                            headers={"Retry-After": str(wait)})
    user = await check_login_async(state.db, email, body.password)
    if user is None:
        raise HTTPException(401, "wrong e-mail or password")
    state.login_throttle.succeeded(email, address)
    return LoginTokens(access_token=state.tokens.issue(user, "access"),
                       refresh_token=state.tokens.issue(user, "refresh"))


@router.post("/api/users/token/refresh")
def refresh(body: RefreshBody, state: StateDep, session: SessionDep) -> AccessToken:
    try:
        user = session.get(User, state.tokens.user_id_from_jwt(body.refresh, "refresh"))
    except AuthError as exc:
        raise HTTPException(401, str(exc)) from exc
    if user is None:
        raise HTTPException(401, "unknown user")
    return AccessToken(access=state.tokens.issue(user, "access"))


@router.get("/api/users/me")
def me(user: UserDep) -> Me:
    return Me(id=user.id, email=user.email, is_admin=user.is_admin)


@router.post("/api/users/tokens", status_code=201)
def new_token(body: TokenBody, session: SessionDep, user: UserDep) -> NewApiToken:
    """A long-lived API token for notebooks and CI; shown once, stored only as a hash."""
    token = create_api_token(session, user, body.name[:200] or "api token")
    session.flush()
    row = session.scalar(select(ApiToken).where(ApiToken.user_id == user.id)
                         .order_by(ApiToken.id.desc()))
    assert row is not None
    return NewApiToken(id=row.id, name=row.name, token=token)


@router.get("/api/users/tokens")
def list_tokens(session: SessionDep, user: UserDep) -> list[ApiTokenInfo]:
    rows = session.scalars(select(ApiToken).where(ApiToken.user_id == user.id)
                           .order_by(ApiToken.id)).all()
    return [token_info(r) for r in rows]


@router.delete("/api/users/tokens/{token_id}")
def revoke_token(token_id: Annotated[int, Path(ge=1, le=2**31 - 1)], session: SessionDep,
                 user: UserDep) -> ApiTokenRevoked:
    get_token_or_404(session, user, token_id).revoked = True
    return ApiTokenRevoked(id=token_id, revoked=True)
