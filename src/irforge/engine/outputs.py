"""The output stage: one row's logits to the request's next token.

The grammar masks what the output may not say, the request's sampler picks (penalties, top-k,
top-p, seed), the logprobs asked for are kept, and the grammar advances. Text, stop strings
and the finish reason follow in `Request.add_token`.
"""

from __future__ import annotations

from typing import Any

from irforge.engine.request import Request
from irforge.runtime.sampling import token_logprobs


def pick_token(req: Request, scores: Any, ids: Any) -> int:
    """The token `req` generates from one row's scores (ids: a top-k program's token ids).
    Raises ValueError, FloatingPointError or IndexError on logits it cannot sample from."""
    allowed = req.guide.mask(scores) if req.guide is not None else scores
    choice = req.sampler(allowed, ids)
    token = int(ids[choice]) if ids is not None else choice
    if req.logprobs is not None:  # full logits only (limits.py refuses top-k programs)
        req.token_logprobs.append(token_logprobs(scores, choice, req.logprobs))
    if req.guide is not None:
        req.guide.accept(token)
    return token
