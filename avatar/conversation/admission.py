"""Per conversation: which session and whose history a ``hello`` gets (docs/security.md).

``ready`` hands each session a secret ``resume_key`` and each user id a secret ``user_key``. Resuming a
session needs its key; getting a user's history needs the user's key. Only SHA-256 hashes of the keys are
stored (avatar/conversation/memory.py), and they are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field


# -- secrets ---------------------------------------------------------------------------------------------
def new_secret() -> str:
    """192 random bits, URL-safe (32 characters)."""
    return secrets.token_urlsafe(24)


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def secret_matches(secret: str | None, stored_hash: str | None) -> bool:
    if not secret or not stored_hash:
        return False
    return hmac.compare_digest(secret_hash(secret), stored_hash)



# -- conversations ---------------------------------------------------------------------------------------
@dataclass
class Admission:
    """What a ``hello`` is granted."""

    session_id: str
    user_id: str | None
    resumed: bool
    resume_key: str
    user_key: str | None
    errors: list[tuple[str, str]] = field(default_factory=list)  # (code, message) to send before ready
    name: str | None = None  # the user id as the client gave it (``ready.user_id``); user_id is where it is stored


def user_identity(name: str, user_key: str) -> str:
    """Where a (user id, user key) pair's turns are stored. User ids are names, not claims: two clients
    that pick the same name without sharing the key get two separate memories, so naming a user id
    tells nothing about whether someone else uses it."""
    return "u:" + secret_hash(name + "\n" + user_key)


def admit(store, hello: dict) -> Admission:
    """Decide which session and whose history a ``hello`` gets. Without the right key a client gets a new,
    empty conversation and an error that says why; it never learns whether the id exists: every answer
    depends only on what the client itself sent and was given."""
    errors: list[tuple[str, str]] = []
    name = hello.get("user_id")
    user_id = user_key = None  # user_id: the stored identity (see user_identity); name: what ready shows
    if name is not None:
        presented = hello.get("user_key")
        if presented:
            identity = user_identity(name, presented)
            if secret_matches(presented, store.user_key_hash(identity)):
                user_id, user_key = identity, presented
            elif secret_matches(presented, store.user_key_hash(name)):  # registered before user_identity
                user_id, user_key = name, presented
            else:
                errors.append(("bad_user_key", f"this user_key does not belong to user {name!r} (a user_key "
                               "comes from the 'ready' message of that user's first session); this conversation "
                               "goes on without that user's history. Leave user_key out to start a new memory "
                               "under this user id"))
                name = None
        else:  # a new memory under this name, whether or not others use the name
            user_key = new_secret()
            user_id = user_identity(name, user_key)
            store.add_user(user_id, secret_hash(user_key), name)
    session_id = hello.get("session_id")
    resumed = False
    resume_key = hello.get("resume_key")
    if session_id is not None:
        if secret_matches(resume_key, store.session_key_hash(session_id)):
            resumed = True
            stored_user = store.session_user(session_id)
            if user_id is None and stored_user is not None:
                user_id, name = stored_user, store.user_name(stored_user)
        else:
            errors.append(("unknown_session", f"session {session_id!r} is unknown to this server or its "
                           "resume_key is wrong (its history may have been deleted); a new conversation was "
                           "started"))
            session_id = None
    if session_id is None:
        resume_key = new_secret()
        session_id = store.create_session(user_id, None, secret_hash(resume_key))
    if (problem := store.problem()) is not None:
        errors.append((problem.code, problem.message))
    return Admission(session_id, user_id, resumed, resume_key, user_key, errors, name=name)
