"""The real default model behind the server: its own chat template and end-of-turn token end answers."""

import pytest

from tests.server.conftest import free_port, start_server


@pytest.mark.slow
def test_real_model_answers_and_stops_at_end_of_turn(default_model_dir, tmp_path):
    from openai import OpenAI

    from tunery.server.settings import ServerSettings

    settings = ServerSettings(model=str(default_model_dir), served_name="smollm2", no_auth=True, port=free_port(),
                              database=tmp_path / "t.db")
    app, server, thread = start_server(settings)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{settings.port}/v1", api_key="unused", max_retries=0, timeout=300)
        result = client.chat.completions.create(
            model="smollm2", temperature=0, max_tokens=48,
            messages=[{"role": "user", "content": "What is the capital of France? Answer in one short sentence."}])
        answer = result.choices[0].message.content
        assert "Paris" in answer
        assert result.choices[0].finish_reason == "stop" and "<|im_end|>" not in answer
        assert result.usage.completion_tokens < 48
    finally:
        server.should_exit = True
        thread.join(30)
