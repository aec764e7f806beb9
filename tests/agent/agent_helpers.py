"""Test helpers for tests/agent: run a FastAPI app on a free local port (uvicorn in a thread), and a stand-in OpenAI
chat-completions server that replays a fixed model transcript."""


from http_server import serving  # noqa: F401  (tests/http_server.py)

# The origin documents' example, verbatim: the code the model writes for the python plugin.
SOLUTION_CODE = '''from sympy import *

def solution():
    a,b,n = symbols('a,b,n',real=True)

    # 求解数列 a 的通项公式
    a_n = 1 + 2 * (n-1)
    a_n_10 = a_n.subs(n, 10)

    # 求解数列 b 的通项公式
    b_n = 2**(n-1)
    b_n_10 = b_n.subs(n, 10)

    # 计算答案
    result = a_n_10 * b_n_10
    for i in range(1, 10):
        result += (a_n.subs(n, i) * b_n.subs(n, i))

    return {'result': result}'''

QUESTION = ("a_n is an arithmetic sequence with first term 1 and common difference 2; b_n is a geometric "
            "sequence with first term 1 and common ratio 2. What is a_1*b_1 + a_2*b_2 + ... + a_10*b_10?")


def replay_openai_app(transcript: list[dict], requests: list[dict]):
    """An OpenAI-compatible /v1 app: each chat completion returns the next `transcript` message
    (`{"content": ..., "tool_calls": [...]}`) in the wire format; request bodies go to `requests`."""
    from fastapi import FastAPI, Request

    app = FastAPI()

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": "replay-model", "object": "model", "created": 0, "owned_by": "test"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        requests.append(body)
        msg = transcript[len(requests) - 1]
        tool_calls = msg.get("tool_calls")
        return {
            "id": f"chatcmpl-{len(requests)}", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "tool_calls" if tool_calls else "stop",
                         "message": {"role": "assistant", "content": msg.get("content"),
                                     **({"tool_calls": tool_calls} if tool_calls else {})}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    return app
