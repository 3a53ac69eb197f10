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
from vlab_backend.auth import AuthError, create_api_token, verify_password
from vlab_backend.ratelimit import LoginLimiter
from vlab_backend.store.schema import ApiToken, User

router = APIRouter(tags=["users"], responses=ERRORS)
limiter = LoginLimiter()


@router.post("/api/users/login")
def login(body: LoginBody, request: Request, state: StateDep,
          session: SessionDep) -> LoginTokens:
    email = body.email.strip().lower()
    key = f"{request.client.host if request.client else '?'}|{email}"
    wait = limiter.retry_after(key)
    if wait:
        raise HTTPException(429, f"too many failed logins; try again in {wait} s",
                            headers={"Retry-After": str(wait)})
    user = session.scalar(select(User).where(User.email == email))
    if user is None or not verify_password(user.password_hash, body.password):
        limiter.failed(key)
        raise HTTPException(401, "wrong e-mail or password")
    limiter.succeeded(key)
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
