"""Files and the Batch API, with OpenAI's contract: validation, statuses that take time,
output in an order other than the input's, per-line failures, expiry with partial
results, cancellation, and an enqueued-token limit per model."""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import BodyPartReader, web

from fleetgate.testing.fake_openai import api, other_endpoints
from fleetgate.testing.fake_openai.api import ApiError, Completion
from fleetgate.testing.fake_openai.billing import Bill
from fleetgate.testing.fake_openai.config import FakeConfig

__all__ = ["BatchStore", "FileStore"]

MAX_LINES = 50_000
#: Embedding inputs across all the requests of a batch, at most.
MAX_EMBEDDING_INPUTS = 50_000
MAX_BATCH_BYTES = 200 * 1024 * 1024
MAX_FILE_BYTES = 512 * 1024 * 1024
PURPOSES = {"batch", "assistants", "fine-tune", "vision", "user_data", "evals"}
PLANNERS: dict[str, Callable[[FakeConfig, dict[str, Any]], Completion]] = {
    "/v1/chat/completions": api.plan_chat,
    "/v1/responses": api.plan_responses,
    "/v1/embeddings": api.plan_embeddings,
    **other_endpoints.PLANNERS,
}
#: What batches may target (``/v1/videos`` no longer: the Videos API shut down on 2026-09-24).
ENDPOINTS = set(PLANNERS)
ACTIVE = {"validating", "in_progress", "finalizing"}


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, content_type="application/json",
                        headers={"x-request-id": api.new_id("req")})


@dataclass
class StoredFile:
    meta: dict[str, Any]
    data: bytes


class FileStore:
    def __init__(self) -> None:
        self.files: dict[str, StoredFile] = {}

    def add(self, filename: str, purpose: str, data: bytes, expires_seconds: int = 30 * 86400) -> dict[str, Any]:
        now = int(time.time())
        file_id = api.new_id("file")
        meta: dict[str, Any] = {
            "id": file_id, "object": "file", "bytes": len(data), "created_at": now,
            "filename": filename, "purpose": purpose, "status": "processed", "status_details": None,
            "expires_at": now + expires_seconds if purpose in ("batch", "batch_output") else None,
        }
        self.files[file_id] = StoredFile(meta, data)
        return meta

    def get(self, file_id: str) -> StoredFile:
        stored = self.files.get(file_id)
        if stored is None:
            raise ApiError(404, f"No such File object: {file_id}", param="id", code="file_not_found")
        return stored

    async def upload(self, request: web.Request) -> web.Response:
        fields: dict[str, Any] = {}
        async for part in await request.multipart():
            if not isinstance(part, BodyPartReader):
                raise ApiError(400, "Nested multipart bodies are not supported.", code="invalid_value")
            if part.name == "file":
                fields["filename"] = part.filename or "upload.jsonl"
                fields["data"] = await part.read(decode=False)
            elif part.name:
                fields[part.name] = await part.text()
        if "data" not in fields:
            raise ApiError(400, "Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
        purpose = fields.get("purpose")
        if purpose not in PURPOSES:
            raise ApiError(400, f"Invalid value for 'purpose': {purpose!r}.", param="purpose", code="invalid_value")
        if len(fields["data"]) > MAX_FILE_BYTES:
            raise ApiError(400, "File is larger than 512 MB.", param="file", code="file_too_large")
        return _json(self.add(fields["filename"], purpose, bytes(fields["data"])))

    async def list_all(self, request: web.Request) -> web.Response:
        purpose = request.query.get("purpose")
        data = [f.meta for f in self.files.values() if purpose is None or f.meta["purpose"] == purpose]
        return _json({"object": "list", "data": data, "has_more": False,
                      "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None})

    async def retrieve(self, request: web.Request) -> web.Response:
        return _json(self.get(request.match_info["id"]).meta)

    async def content(self, request: web.Request) -> web.Response:
        stored = self.get(request.match_info["id"])
        return web.Response(body=stored.data, content_type="application/octet-stream",
                            headers={"x-request-id": api.new_id("req")})

    async def delete(self, request: web.Request) -> web.Response:
        file_id = request.match_info["id"]
        self.get(file_id)
        del self.files[file_id]
        return _json({"id": file_id, "object": "file", "deleted": True})


@dataclass
class Batch:
    obj: dict[str, Any]
    model: str = ""
    enqueued_tokens: int = 0
    output_expires_seconds: int = 30 * 86400
    cancel_requested: bool = False
    task: asyncio.Task[None] | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    #: The project its lines bill (the creating request's ``OpenAI-Project``).
    project: str = "proj_default"


class _Invalid(Exception):
    def __init__(self, code: str, message: str, line: int | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.entry = {"code": code, "message": message, "param": param, "line": line}


class BatchStore:
    def __init__(self, config: FakeConfig, files: FileStore, bill: Bill) -> None:
        self.bill = bill
        self.config = config
        self.files = files
        self.batches: dict[str, Batch] = {}
        self.rng = random.Random(config.seed + 1)

    # -- HTTP ----------------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        body = await request.json()
        input_file_id = body.get("input_file_id")
        endpoint = body.get("endpoint")
        if not input_file_id:
            raise ApiError(400, "Missing required parameter: 'input_file_id'.", param="input_file_id",
                           code="missing_required_parameter")
        if endpoint not in ENDPOINTS:
            raise ApiError(400, f"Invalid value for 'endpoint': {endpoint!r}.", param="endpoint", code="invalid_value")
        if body.get("completion_window") != "24h":
            raise ApiError(400, "Invalid value for 'completion_window': only '24h' is supported.",
                           param="completion_window", code="invalid_value")
        metadata = body.get("metadata") or {}
        if not isinstance(metadata, dict) or len(metadata) > 16 or any(
            len(str(k)) > 64 or not isinstance(v, str) or len(v) > 512 for k, v in metadata.items()
        ):
            raise ApiError(400, "Invalid 'metadata': at most 16 pairs, keys up to 64 and values up to 512 characters.",
                           param="metadata", code="invalid_value")
        expires_after = body.get("output_expires_after")
        if expires_after is not None and not (
            isinstance(expires_after, dict) and expires_after.get("anchor") == "created_at"
            and isinstance(expires_after.get("seconds"), int) and 3600 <= expires_after["seconds"] <= 2_592_000
        ):
            raise ApiError(400, "Invalid 'output_expires_after': anchor 'created_at' and seconds from 3600 to "
                                "2592000.", param="output_expires_after", code="invalid_value")
        stored = self.files.get(input_file_id)
        if stored.meta["purpose"] != "batch":
            raise ApiError(400, f"File {input_file_id} was not uploaded with purpose 'batch'.",
                           param="input_file_id", code="invalid_value")
        now = int(time.time())
        obj = {
            "id": api.new_id("batch"), "object": "batch", "endpoint": endpoint, "errors": None,
            "input_file_id": input_file_id, "completion_window": "24h", "status": "validating",
            "output_file_id": None, "error_file_id": None, "created_at": now, "in_progress_at": None,
            "expires_at": now + int(self.config.batch.completion_window_seconds), "finalizing_at": None,
            "completed_at": None, "failed_at": None, "expired_at": None, "cancelling_at": None,
            "cancelled_at": None, "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": metadata, "usage": None,
        }
        batch = Batch(obj, output_expires_seconds=(expires_after or {}).get("seconds", 30 * 86400),
                      project=request.headers.get("openai-project") or "proj_default")
        self.batches[obj["id"]] = batch
        batch.task = asyncio.get_running_loop().create_task(self._run(batch, stored.data))
        return _json(obj)

    def _get(self, batch_id: str) -> Batch:
        batch = self.batches.get(batch_id)
        if batch is None:
            raise ApiError(404, f"No batch found with id '{batch_id}'.", param="batch_id", code="batch_not_found")
        return batch

    async def retrieve(self, request: web.Request) -> web.Response:
        return _json(self._get(request.match_info["id"]).obj)

    async def cancel(self, request: web.Request) -> web.Response:
        batch = self._get(request.match_info["id"])
        if batch.obj["status"] not in ACTIVE:
            raise ApiError(409, f"Cannot cancel a batch with status '{batch.obj['status']}'.", code="invalid_state")
        batch.cancel_requested = True
        batch.obj["status"] = "cancelling"
        batch.obj["cancelling_at"] = int(time.time())
        return _json(batch.obj)

    async def list_all(self, request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            raise ApiError(400, "Invalid 'limit': expected an integer.", param="limit") from None
        if not 1 <= limit <= 100:
            raise ApiError(400, "Invalid 'limit': must be between 1 and 100.", param="limit")
        ordered = sorted(self.batches.values(), key=lambda b: b.obj["id"], reverse=True)  # newest first
        after = request.query.get("after")
        if after:
            ordered = [b for b in ordered if b.obj["id"] < after]
        page = [b.obj for b in ordered[:limit]]
        return _json({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                      "last_id": page[-1]["id"] if page else None, "has_more": len(ordered) > limit})

    async def shutdown(self, app: web.Application) -> None:
        for batch in self.batches.values():
            if batch.task is not None:
                batch.task.cancel()

    # -- the life of a batch ---------------------------------------------------------------

    async def _run(self, batch: Batch, data: bytes) -> None:
        timings = self.config.batch
        obj = batch.obj
        deadline = time.monotonic() + timings.completion_window_seconds
        await asyncio.sleep(timings.validating_seconds)
        if batch.cancel_requested:
            return await self._cancelled(batch)
        try:
            lines = self._validate(batch, data)
        except _Invalid as e:
            obj.update(status="failed", failed_at=int(time.time()),
                       errors={"object": "list", "data": [e.entry]})
            return
        obj.update(status="in_progress", in_progress_at=int(time.time()))
        obj["request_counts"]["total"] = len(lines)
        order = list(range(len(lines)))
        self.rng.shuffle(order)  # output order is not input order
        usage = {"input_tokens": 0, "output_tokens": 0, "cached": 0}
        done = 0
        credit = 0.0  # lines earned at requests_per_second and not yet processed
        last = time.monotonic()
        while done < len(order):
            if batch.cancel_requested:
                return await self._cancelled(batch)
            now = time.monotonic()
            if now >= deadline:
                return await self._expire(batch, [lines[i] for i in order[done:]])
            credit += timings.requests_per_second * (now - last)
            last = now
            budget = min(int(credit), len(order) - done)
            for index in order[done: done + budget]:
                self._execute(batch, lines[index], usage)
            done += budget
            credit -= budget
            await asyncio.sleep(0.02)
        obj.update(status="finalizing", finalizing_at=int(time.time()))
        obj["usage"] = {
            "input_tokens": usage["input_tokens"], "output_tokens": usage["output_tokens"],
            "total_tokens": usage["input_tokens"] + usage["output_tokens"],
            "input_tokens_details": {"cached_tokens": usage["cached"]}, "output_tokens_details": {"reasoning_tokens": 0},
        }
        await asyncio.sleep(timings.finalizing_seconds)
        self._write_files(batch)
        obj.update(status="completed", completed_at=int(time.time()))

    def _validate(self, batch: Batch, data: bytes) -> list[dict[str, Any]]:
        if len(data) > MAX_BATCH_BYTES:
            raise _Invalid("file_too_large", "The input file is larger than 200 MB.")
        endpoint = batch.obj["endpoint"]
        lines: list[dict[str, Any]] = []
        seen: set[str] = set()
        model: str | None = None
        tokens = 0
        inputs = 0
        for number, raw in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
            if not raw.strip():
                continue
            if len(lines) >= MAX_LINES:
                raise _Invalid("too_many_requests", f"A batch can have at most {MAX_LINES} requests.", number)
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                raise _Invalid("invalid_json_line", "This line is not parseable as valid JSON.", number) from None
            if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
                raise _Invalid("missing_required_parameter", "Each line needs a string 'custom_id'.", number, "custom_id")
            if line["custom_id"] in seen:
                raise _Invalid("duplicate_custom_id",
                               f"The custom_id {line['custom_id']!r} appears more than once in this batch.",
                               number, "custom_id")
            seen.add(line["custom_id"])
            if line.get("method") != "POST":
                raise _Invalid("invalid_method", "Only the POST method is supported.", number, "method")
            if line.get("url") != endpoint:
                raise _Invalid("invalid_url", f"The URL {line.get('url')!r} does not match the batch endpoint "
                                              f"{endpoint!r}.", number, "url")
            body = line.get("body")
            if not isinstance(body, dict):
                raise _Invalid("missing_required_parameter", "Each line needs a JSON object 'body'.", number, "body")
            if body.get("stream"):
                raise _Invalid("invalid_value", "Streaming is not supported in batches.", number, "body.stream")
            line_model = body.get("model")
            if model is None:
                model = line_model
            elif line_model != model:
                raise _Invalid("mismatched_model", "All requests in a batch must use the same model; found "
                                                   f"{model!r} and {line_model!r}.", number, "body.model")
            planner = PLANNERS.get(endpoint)
            if planner is not None:
                try:
                    plan = planner(self.config, body)
                    tokens += plan.rate_tokens
                    inputs += len(plan.inputs)
                except ApiError:
                    pass  # a bad body fails its own line, not the batch
            if endpoint == "/v1/embeddings" and inputs > MAX_EMBEDDING_INPUTS:
                raise _Invalid("too_many_inputs", f"An embeddings batch can have at most {MAX_EMBEDDING_INPUTS:,} "
                                                  "embedding inputs across all its requests.", number, "body.input")
            lines.append(line)
        if not lines:
            raise _Invalid("empty_file", "The input file has no requests.")
        batch.model = model or ""
        limit = self.config.limits_for(batch.model).batch_enqueued_tokens
        queued = sum(b.enqueued_tokens for b in self.batches.values()
                     if b is not batch and b.model == batch.model and b.obj["status"] in ACTIVE)
        if queued + tokens > limit:
            raise _Invalid(
                "token_limit_exceeded",
                f"Enqueued token limit reached for {batch.model} in organization org-fleetgate-fake. "
                f"Limit: {limit:,} enqueued tokens. Please try again once some in_progress batches have been completed.",
            )
        batch.enqueued_tokens = tokens
        return lines

    def _execute(self, batch: Batch, line: dict[str, Any], usage: dict[str, int]) -> None:
        counts = batch.obj["request_counts"]
        request_id = api.new_id("req")
        planner = PLANNERS.get(batch.obj["endpoint"])
        status, body = 200, None
        if planner is None:
            status, body = 404, ApiError(404, "This endpoint is not simulated.").body()
        elif self.rng.random() < self.config.batch.line_failure_rate:
            status, body = 500, ApiError(500, "The server had an error processing this request.",
                                         type="server_error").body()
        elif self.config.batch.line_rejection_rate and self.rng.random() < self.config.batch.line_rejection_rate:
            status, body = 400, ApiError(400, "Invalid 'messages': the request was rejected.",
                                         param="messages", code="invalid_value").body()
        else:
            try:
                plan = planner(self.config, line["body"])
                body = api.render(self.config, plan, 0)
                self.bill.charge(plan.model, body.get("usage"), tier="batch", project=batch.project)
                usage["input_tokens"] += plan.prompt_tokens
                usage["output_tokens"] += plan.completion_tokens
            except ApiError as e:
                status, body = e.status, e.body()
        record = {"id": api.new_id("batch_req"), "custom_id": line["custom_id"],
                  "response": {"status_code": status, "request_id": request_id, "body": body}, "error": None}
        if status == 200:
            counts["completed"] += 1
            batch.outputs.append(record)
        else:
            counts["failed"] += 1
            batch.errors.append(record)

    async def _expire(self, batch: Batch, unfinished: list[dict[str, Any]]) -> None:
        for line in unfinished:
            batch.errors.append({
                "id": api.new_id("batch_req"), "custom_id": line["custom_id"], "response": None,
                "error": {"code": "batch_expired",
                          "message": "This request could not be executed before the completion window expired."},
            })
        batch.obj["request_counts"]["failed"] += len(unfinished)
        self._write_files(batch)
        batch.obj.update(status="expired", expired_at=int(time.time()))

    async def _cancelled(self, batch: Batch) -> None:
        batch.obj.update(status="cancelling", cancelling_at=batch.obj["cancelling_at"] or int(time.time()))
        await asyncio.sleep(self.config.batch.cancelling_seconds)
        self._write_files(batch)
        batch.obj.update(status="cancelled", cancelled_at=int(time.time()))

    def _write_files(self, batch: Batch) -> None:
        def jsonl(records: list[dict[str, Any]]) -> bytes:
            return b"".join(json.dumps(r).encode() + b"\n" for r in records)

        batch_id = batch.obj["id"]
        timings = self.config.batch
        batch.outputs += [dict(r, id=api.new_id("batch_req")) for r in batch.outputs[: timings.duplicate_lines]]
        batch.outputs += [dict(r, id=api.new_id("batch_req"), custom_id=f"unknown-{api.new_id('id')}")
                          for r in batch.outputs[: timings.unknown_lines]]
        if batch.outputs:
            batch.obj["output_file_id"] = self.files.add(f"{batch_id}_output.jsonl", "batch_output",
                                                         jsonl(batch.outputs), batch.output_expires_seconds)["id"]
        if batch.errors:
            batch.obj["error_file_id"] = self.files.add(f"{batch_id}_error.jsonl", "batch_output",
                                                        jsonl(batch.errors), batch.output_expires_seconds)["id"]
