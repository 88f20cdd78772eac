"""Mailroom's HTTP API: sign-ups, contact list uploads and an audited admin area."""

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel

from mailroom import config, db, worker
from mailroom.tasks import audit, import_csv, send_welcome_email


class Signup(BaseModel):
    email: str


class User(BaseModel):
    id: int
    email: str


class Upload(BaseModel):
    id: int
    status: str
    row_count: int
    error: str | None = None


def record_access(request: Request, background_tasks: BackgroundTasks) -> None:
    """Audit every admin request. FastAPI shares one task batch per request, so this
    task runs before any the endpoint adds."""
    background_tasks.add_task(audit, "admin.access", method=request.method, path=request.url.path)


router = APIRouter()
admin = APIRouter(prefix="/admin", dependencies=[Depends(record_access)])


@router.post("/signup", status_code=201)
def signup(body: Signup, background_tasks: BackgroundTasks) -> User:
    try:
        with db.connect() as conn:
            user_id = db.insert(conn, "INSERT INTO users (email) VALUES (?)", body.email)
    except sqlite3.IntegrityError:
        raise HTTPException(409, "this email is already signed up") from None
    background_tasks.add_task(audit, "user.signup", user_id=user_id)
    if config.settings.celery_broker:  # Mailroom runs a Celery worker: the email goes there
        worker.configure()
        worker.send_welcome_email.delay(body.email)
    else:
        background_tasks.add_task(send_welcome_email, body.email)
    return User(id=user_id, email=body.email)


@router.post("/upload", status_code=202)
async def upload_contacts(request: Request, background_tasks: BackgroundTasks) -> Upload:
    """Accept a contact list as a text/csv request body; the import runs after the response."""
    if request.headers.get("content-type", "").partition(";")[0].strip() != "text/csv":
        raise HTTPException(415, "send the contact list as text/csv")
    try:
        text = (await request.body()).decode()
    except UnicodeDecodeError:
        raise HTTPException(400, "the contact list must be UTF-8") from None
    with db.connect() as conn:
        upload_id = db.insert(conn, "INSERT INTO uploads DEFAULT VALUES")
    background_tasks.add_task(import_csv, upload_id, text)
    return Upload(id=upload_id, status="pending", row_count=0)


@router.get("/uploads/{upload_id}")
def get_upload(upload_id: int) -> Upload:
    with db.connect() as conn:
        row = conn.execute(
            "SELECT id, status, row_count, error FROM uploads WHERE id = ?", (upload_id,)
        ).fetchone()
    if row is None:
        raise HTTPException(404, "no such upload")
    return Upload(**row)


@admin.post("/users/{user_id}/welcome-email", status_code=202)
def resend_welcome_email(user_id: int, background_tasks: BackgroundTasks) -> User:
    with db.connect() as conn:
        row = conn.execute("SELECT id, email FROM users WHERE id = ?", (user_id,)).fetchone()
    if row is None:
        raise HTTPException(404, "no such user")
    background_tasks.add_task(send_welcome_email, row["email"])
    return User(**row)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    db.init_schema()
    yield


def create_app() -> FastAPI:
    app = FastAPI(title="Mailroom", lifespan=lifespan)
    app.include_router(router)
    app.include_router(admin)
    return app
