"""Talks to Strata's OpenAI-compatible front door with the official `openai`
package, as an application would, and prints what it got as one JSON
object for tests/tests/openai_front_door.rs to check.

Usage: python openai_client.py BASE_URL API_KEY
"""

import json
import sys

import openai


def main() -> None:
    base, key = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
    seen = {}

    seen["models"] = sorted(m.id for m in client.models.list())

    chat = client.chat.completions.create(
        model="desk",
        messages=[
            {"role": "system", "content": "You are a bank's assistant."},
            {"role": "user", "content": "hello there"},
        ],
        temperature=0.2,
        user="app-7",
    )
    seen["chat"] = {
        "content": chat.choices[0].message.content,
        "finish_reason": chat.choices[0].finish_reason,
        "object": chat.object,
        "model": chat.model,
        "strata": chat.model_extra.get("strata"),
    }

    pieces = []
    finish = None
    strata = None
    for chunk in client.chat.completions.create(
        model="desk",
        messages=[{"role": "user", "content": "hello there, streaming please"}],
        stream=True,
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
        if chunk.model_extra.get("strata"):
            strata = chunk.model_extra["strata"]
    seen["stream"] = {"pieces": pieces, "finish_reason": finish, "strata": strata}

    human = client.chat.completions.create(
        model="desk", messages=[{"role": "user", "content": "my card was stolen"}]
    )
    seen["escalated"] = {
        "content": human.choices[0].message.content,
        "strata": human.model_extra.get("strata"),
    }

    text = client.completions.create(model="desk", prompt="hello there")
    seen["completion"] = {"text": text.choices[0].text, "object": text.object}

    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(model="desk", prompt="hello there", stream=True)
        if c.choices
    )
    seen["completion_stream"] = streamed

    try:
        client.chat.completions.create(
            model="no-such-pipeline", messages=[{"role": "user", "content": "hi"}]
        )
        seen["unknown_model"] = None
    except openai.NotFoundError as error:
        seen["unknown_model"] = {"status": error.status_code, "message": str(error)}

    try:
        client.chat.completions.create(
            model="strict", messages=[{"role": "user", "content": "what is the weather"}]
        )
        seen["rejected"] = None
    except openai.UnprocessableEntityError as error:
        seen["rejected"] = {"status": error.status_code, "message": str(error)}

    stranger = openai.OpenAI(base_url=f"{base}/v1", api_key="wrong-key", max_retries=0)
    try:
        stranger.models.list()
        seen["wrong_key"] = None
    except openai.AuthenticationError as error:
        seen["wrong_key"] = {"status": error.status_code}

    print(json.dumps(seen))


if __name__ == "__main__":
    main()
