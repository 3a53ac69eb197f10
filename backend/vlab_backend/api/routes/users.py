"""Login and token refresh, with the field names of the dAIEdge client."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel
from sqlalchemy import select

from vlab_backend.api.state import StateDep
from vlab_backend.auth import AuthError, verify_password
from vlab_backend.store.schema import User

router = APIRouter(tags=["users"])


class LoginBody(BaseModel):
    email: str
    password: str


class RefreshBody(BaseModel):
    refresh: str


@router.post("/api/users/login")
def login(body: LoginBody, state: StateDep) -> dict[str, str]:
    with state.db.session() as session:
        user = session.scalar(select(User).where(User.email == body.email.strip().lower()))
        if user is None or not verify_password(user.password_hash, body.password):
            raise HTTPException(401, "wrong e-mail or password")
        return {"access_token": state.tokens.issue(user, "access"),
                "refresh_token": state.tokens.issue(user, "refresh")}


@router.post("/api/users/token/refresh")
def refresh(body: RefreshBody, state: StateDep) -> dict[str, str]:
    with state.db.session() as session:
        try:
            user = session.get(User, state.tokens.user_id_from_jwt(body.refresh, "refresh"))
        except AuthError as exc:
            raise HTTPException(401, str(exc)) from exc
        if user is None:
            raise HTTPException(401, "unknown user")
        return {"access": state.tokens.issue(user, "access")}
