"""The framework floor: FastAPI on uvicorn, one POST route that answers 202 and does nothing.

`stress/bench.py` serves it exactly as it serves the real API (same workers,
same uvicorn options) to measure what the framework alone costs.
"""

from __future__ import annotations

from fastapi import FastAPI, Response

app = FastAPI()


@app.post("/v1/events", status_code=202)
async def accept() -> Response:
    return Response(content=b'{"accepted":1}', status_code=202, media_type="application/json")
