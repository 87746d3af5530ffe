"""POST /v1/feedback: a rating, a preferred answer or a comment about one response this
server gave, stored in the workspace's feedback store for the fine-tuning stage."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPBearer

from lmforge.serve.errors import APIError, bad_request
from lmforge.serve.sampling import check_text
from lmforge.serve.schemas import FeedbackRequest
from lmforge.serve.state import server_state

router = APIRouter(prefix="/v1", dependencies=[Security(HTTPBearer(auto_error=False))],
                   tags=["Feedback"])


@router.post("/feedback")
async def feedback(body: FeedbackRequest, request: Request) -> dict[str, Any]:
    state = server_state(request)
    if state.feedback is None:
        raise APIError(404, "Feedback is off on this server (it runs with "
                            "--no-store-responses).", code="feedback_disabled")
    check_text(body)
    if body.rating is None and not body.preferred and not body.comment:
        raise bad_request("Give a rating (+1 or -1), a preferred answer, or a comment.",
                          "rating")
    stored = await run_in_threadpool(state.feedback.response, body.response_id)
    key_id = request.state.key_id
    # Another key's responses are as unknown as missing ones: ids do not leak across keys.
    if stored is None or (state.keys is not None and stored.key_id != key_id):
        raise APIError(404, f"No response with id `{body.response_id}` on this server.",
                       param="response_id", code="response_not_found")
    if body.choice >= stored.choices:
        raise bad_request(f"Response `{body.response_id}` has {stored.choices} choice(s); "
                          f"choice {body.choice} does not exist.", "choice")
    seq, created = await run_in_threadpool(state.feedback.add_feedback, body.response_id,
                                           body.choice, body.rating, body.preferred,
                                           body.comment, key_id)
    request.state.access.update(response_id=body.response_id, feedback=seq)
    return {"id": f"feedback-{seq}", "object": "feedback", "response_id": body.response_id,
            "choice": body.choice, "created": created}
