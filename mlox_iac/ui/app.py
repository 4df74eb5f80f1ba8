"""The UI's web app: server-rendered pages (Jinja2), a few lines of plain JavaScript for
reveal, copy and following a job, and no build step.

Pages: the stacks (``/``), a stack (``/stacks/<name>``), a new stack (``/new``), a job
(``/jobs/<id>``, following its events). Every action goes through :class:`Backend` (the
CLI's API) and shows its CLI twin (:mod:`mlox_iac.ui.actions`).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import parse_qs

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from mlox_iac.errors import ConfigError, MloxError
from mlox_iac.ui import actions
from mlox_iac.ui.backend import Backend, error_line
from mlox_iac.ui.jobs import Jobs, engine_events
from mlox_iac.ui.security import COOKIE, CSRF_FIELD, CSRF_HEADER, Guard

HERE = Path(__file__).resolve().parent
NO_STORE = {"Cache-Control": "no-store"}
# Which field of the create form a validation line is about, by the key it names.
FIELD_KEYS = (("server_type", "size"), ("instance_type", "size"), ("memory_mb", "size"), ("size", "size"),
              ("location", "location"), ("region", "location"), ("public_keys", "ssh_key"), ("ssh-key", "ssh_key"),
              ("admin_cidrs", "admin_cidr"), ("admin-cidr", "admin_cidr"), ("acme_email", "acme_email"),
              ("acme-email", "acme_email"), ("domain", "domain"), ("services", "services"), ("provider", "provider"),
              ("onprem.host", "host"), ("--host", "host"), ("--stack", "stack"), ("already exists", "stack"))


def field_of(line: str) -> str:
    """The form field a one-line error names (``form`` when none)."""
    head = line.split(" (allowed", 1)[0]
    for key, name in FIELD_KEYS:
        if key in head:
            return name
    return "form"


def _attempt(call: Callable[[], Any]) -> tuple[Any, Optional[str]]:
    """(value, None) or (None, the error's one line): a section that fails says why, alone."""
    try:
        return call(), None
    except Exception as error:  # shown as one line in its section; the page still renders
        return None, error_line(error)


def create_app(backend: Backend, guard: Guard) -> FastAPI:
    """The app for one project and one session token."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(twin=actions.twin, ACTIONS=actions.ACTIONS, csrf=guard.csrf, CSRF_FIELD=CSRF_FIELD)
    from mlox_iac.connect import format_bytes

    templates.env.filters["bytes"] = format_bytes
    jobs = Jobs()
    app.state.jobs = jobs
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.middleware("http")
    async def guard_every_request(request: Request, call_next):
        if not guard.host_ok(request.headers.get("host")):
            return PlainTextResponse("refused: this UI answers only at 127.0.0.1 and localhost", 403, headers=NO_STORE)
        given = request.query_params.get("token")
        if given is not None:
            if not guard.token_ok(given):
                return PlainTextResponse("refused: wrong token (use the URL mlox-iac ui printed)", 403, headers=NO_STORE)
            response = RedirectResponse(request.url.path, 303, headers=NO_STORE)
            response.set_cookie(COOKIE, guard.token, httponly=True, samesite="strict", path="/")
            return response
        if not guard.token_ok(request.cookies.get(COOKIE)):
            return PlainTextResponse("refused: no token (open the URL mlox-iac ui printed, with its ?token=)", 403,
                                     headers=NO_STORE)
        if request.method not in ("GET", "HEAD"):
            if not guard.origin_ok(request.headers.get("origin")):
                return PlainTextResponse("refused: request from another site", 403, headers=NO_STORE)
            given_csrf = request.headers.get(CSRF_HEADER)
            if given_csrf is None and request.headers.get("content-type", "").startswith(
                    "application/x-www-form-urlencoded"):
                # The body, read here, is replayed to the endpoint (Starlette caches it).
                given_csrf = (parse_qs((await request.body()).decode("utf-8", "replace")).get(CSRF_FIELD) or [None])[0]
            if not guard.csrf_ok(given_csrf):
                return PlainTextResponse("refused: missing or wrong CSRF token (reload the page)", 403, headers=NO_STORE)
        response = await call_next(request)
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"  # no-referrer would make Origin "null"
        response.headers["Content-Security-Policy"] = ("default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                                       "script-src 'self'; frame-ancestors 'none'; form-action 'self'")
        return response

    def page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, template, context, status_code=status)

    @app.get("/", response_class=HTMLResponse)
    def stacks(request: Request):
        rows, problem = _attempt(backend.rows)
        return page(request, "stacks.html", rows=rows or [], problem=problem,
                    running={r.name: jobs.running(r.name) for r in rows or []})

    @app.get("/stacks/{name}", response_class=HTMLResponse)
    def stack(request: Request, name: str):
        if name not in backend.stack_names():
            return page(request, "error.html", 404, problem=f"no stack {name} in this project (stacks/Pulumi.{name}.yaml)")
        return page(request, "stack.html", **stack_view(backend, jobs, name))

    @app.get("/stacks/{name}/logs/{service}", response_class=PlainTextResponse)
    def logs(name: str, service: str, tail: int = 100):
        text, problem = _attempt(lambda: backend.logs(name, service, tail=min(max(tail, 1), 2000)))
        return PlainTextResponse(text if problem is None else f"error: {problem}", 200 if problem is None else 502)

    @app.post("/stacks/{name}/reveal")
    async def reveal(request: Request, name: str):
        body = await request.json() if request.headers.get("content-type", "").startswith("application/json") else {}
        secret = str(body.get("secret", ""))
        value, problem = _attempt(lambda: backend.reveal(name, secret))
        if problem is not None:
            return JSONResponse({"error": problem}, 400, headers=NO_STORE)
        return JSONResponse({"secret": secret, "value": value}, headers={**NO_STORE, "Pragma": "no-cache"})

    def start(name: str, action: str, twin: str, work) -> RedirectResponse:
        job = jobs.start(name, action, twin, work)
        return RedirectResponse(f"/jobs/{job.id}", 303)

    def refused(request: Request, name: str, problem: str) -> HTMLResponse:
        return page(request, "stack.html", 400, **stack_view(backend, jobs, name, problem=problem))

    @app.post("/stacks/{name}/backup")
    def backup(request: Request, name: str):
        try:
            return start(name, "backup", actions.twin("backup", stack=name), lambda job: backup_job(job))
        except MloxError as error:
            return refused(request, name, error_line(error))

    def backup_job(job):
        result = backend.backup(job.stack, job.say)
        job.say(f"snapshot {str(result.get('snapshot'))[:8]}: check {result.get('check')}")
        return result

    @app.post("/stacks/{name}/restore")
    def restore(request: Request, name: str, snapshot: str = Form(...), confirm: str = Form("")):
        if confirm.strip() != name:
            return refused(request, name, f"restore: type the stack name {name!r} to confirm (you typed {confirm.strip()!r})")
        twin = actions.twin("restore", stack=name, snapshot=snapshot)
        try:
            return start(name, "restore", twin, lambda job: backend.restore(name, snapshot, job.say))
        except MloxError as error:
            return refused(request, name, error_line(error))

    @app.post("/stacks/{name}/preview")
    def preview(request: Request, name: str):
        def work(job):
            result = backend.preview(name, engine_events(job, "preview", diffs=True))
            job.say(f"preview: {result.changed} resource(s) would change: {json.dumps(result.changes)}")
            return result.to_dict()

        try:
            return start(name, "preview", actions.twin("preview", stack=name), work)
        except MloxError as error:
            return refused(request, name, error_line(error))

    @app.post("/stacks/{name}/up")
    def up(request: Request, name: str, confirm: str = Form("")):
        if confirm.strip() != name:
            return refused(request, name, f"deploy: type the stack name {name!r} to confirm (you typed {confirm.strip()!r})")

        def work(job):
            result = backend.up(name, engine_events(job, "update", diffs=False))
            job.say(f"deployed: {json.dumps(result.changes)} in {result.duration_s:.0f}s")
            return {k: v for k, v in result.to_dict().items() if k != "outputs"}

        try:
            return start(name, "up", actions.twin("up", stack=name), work)
        except MloxError as error:
            return refused(request, name, error_line(error))

    @app.post("/stacks/{name}/migrate")
    def migrate(request: Request, name: str, step: str = Form(...), to: str = Form(""), confirm: str = Form("")):
        if confirm.strip() != name:
            return refused(request, name, f"migrate: type the stack name {name!r} to confirm (you typed {confirm.strip()!r})")
        action = {"start": "migrate", "finish": "migrate-finish", "abort": "migrate-abort"}.get(step)
        if action is None:
            return refused(request, name, f"step: {step!r} is not allowed (allowed: start, finish, abort)")
        twin = actions.twin(action, stack=name, to=to)
        work = lambda job: backend.migrate(name, to if step == "start" else None, step == "finish", step == "abort",  # noqa: E731
                                           job.say)
        try:
            return start(name, action, twin, work)
        except MloxError as error:
            return refused(request, name, error_line(error))

    @app.get("/new", response_class=HTMLResponse)
    def new(request: Request):
        return page(request, "new.html", values={"provider": "hetzner"}, errors={}, **new_choices())

    @app.post("/new", response_class=HTMLResponse)
    async def create(request: Request):
        form = await request.form()
        values = {k: str(form.get(k) or "") for k in ("stack", "provider", "location", "size", "domain", "acme_email",
                                                        "ssh_key", "admin_cidr", "host", "user")}
        values["services"] = ",".join(str(s) for s in form.getlist("services"))
        try:
            backend.create(values)
        except MloxError as error:
            lines = error.problems if isinstance(error, ConfigError) else [str(error)]
            errors: dict[str, list[str]] = {}
            for line in lines:
                errors.setdefault(field_of(line), []).append(line)
            return page(request, "new.html", 400, values=values, errors=errors, **new_choices())
        return RedirectResponse(f"/stacks/{values['stack'].strip()}", 303)

    @app.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job_page(request: Request, job_id: str):
        job = jobs.get(job_id)
        if job is None:
            return page(request, "error.html", 404, problem=f"no job {job_id} (jobs live as long as this UI process)")
        return page(request, "job.html", job=job)

    @app.get("/jobs/{job_id}/events")
    def job_events(request: Request, job_id: str, start: int = 0):
        job = jobs.get(job_id)
        if job is None:
            return PlainTextResponse("no such job", 404)
        last = request.headers.get("last-event-id", "")
        if last.isdigit():  # the browser reconnected: go on after the last event it has
            start = int(last) + 1

        def stream():
            for index, item in job.follow(start):
                if item is None:
                    yield ": keep-alive\n\n"
                else:
                    yield f"id: {index}\ndata: {json.dumps(item, default=str)}\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream", headers=NO_STORE)

    return app


def new_choices() -> dict[str, Any]:
    from mlox_iac.components.services.registry import SERVICES
    from mlox_iac.providers import PROVIDERS

    core = [n for n, s in SERVICES.items() if s.preset == "core"]
    return {"providers": list(PROVIDERS), "services": [(n, SERVICES[n].summary, n in core) for n in SERVICES]}


def stack_view(backend: Backend, jobs: Jobs, name: str, problem: Optional[str] = None) -> dict[str, Any]:
    """Everything the stack page shows, each part fetched at once and failing alone."""
    from mlox_iac.components.services.registry import SERVICES
    from mlox_iac.migrations.stack import PHASES

    config, config_problem = _attempt(lambda: backend.config(name))
    cost = _attempt(lambda: backend.cost(config))[0] if config is not None else None
    outputs, outputs_problem = _attempt(lambda: backend.outputs(name))
    view: dict[str, Any] = {"name": name, "problem": problem, "config_problem": config_problem, "cost": cost,
                            "outputs_problem": outputs_problem, "migration": _attempt(lambda: backend.migration(name))[0],
                            "jobs": list(reversed(jobs.for_stack(name)))[:5], "running": jobs.running(name),
                            "phases": PHASES}
    if outputs is None:
        return view
    parts: dict[str, Callable[[], Any]] = {
        "health": lambda: backend.probe(name, outputs), "backup": lambda: backend.backup_status(name, outputs),
        "snapshots": lambda: backend.snapshots(name, outputs) if outputs.get("backup_repository") else None,
        "alerts": lambda: backend.alerts(name, outputs), "env": lambda: backend.env(name, outputs),
        "services": lambda: backend.compose_services(name, outputs),
    }
    with ThreadPoolExecutor(max_workers=len(parts)) as pool:
        futures = {key: pool.submit(_attempt, call) for key, call in parts.items()}
        for key, future in futures.items():
            view[key], view[f"{key}_problem"] = future.result()
    owner = {}
    if config is not None:
        from mlox_iac.components.services.base import Context

        ctx = Context(config)
        owner = {r.name: n for n in config.enabled_services() for r in SERVICES[n].routes(ctx)}
    view["versions"] = {route: SERVICES[svc].image.rpartition(":")[2] for route, svc in owner.items()}
    view["secrets"] = backend.secrets(outputs)
    view["ui_user"] = outputs.get("ui_user")
    view["address"] = outputs.get("server_address")
    view["urls"] = outputs.get("urls") or {}
    view["home"] = view["urls"].get("home")
    return view
