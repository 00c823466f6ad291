"""The LLM backends of `rsyn caption`: a real OpenAI-compatible HTTP server on 127.0.0.1, the tiny local
GPT-2 through transformers, the output cleaner and the prompt."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import faults
import pytest

from rsyn.errors import RsynError
from rsyn.llm import HFBackend, OpenAIBackend, Sampling, clean_generation, normalize_base_url, open_backend
from rsyn.prompts import ANSWER_CUE, DEFAULT_INSTRUCTION, PromptTemplate

# --------------------------------------------------------------------------- the loopback server


def fused_reply(user: str) -> str:
    """What the loopback 'model' answers: a chatty, quoted, labelled reply built from the inputs it got."""
    fields = dict(line.split(": ", 1) for line in user.splitlines() if ": " in line)
    raw = fields.get("Raw text", "").rstrip(".")
    extra = f" showing {fields['Tags']}" if "Tags" in fields else ""
    return f'Sure! Here is the description:\n\n"{raw}{extra}."\n\nNote: I merged the inputs.'


def expected_syn_text(raw: str, tags: list[str]) -> str:
    return raw.rstrip(".") + (f" showing {', '.join(tags)}" if tags else "") + "."


class LoopbackLLMServer:
    """A real ThreadingHTTPServer speaking /v1/models, /v1/completions and /v1/chat/completions.

    mode: ok | slow (first `fail_first` requests sleep `slow_s`) | 500 | flaky (first `fail_first` requests get
    500) | 429 (first `fail_first`, with Retry-After) | malformed | empty | 404. `latency` delays every reply.
    A prompt that contains "[500]", "[malformed]" or "[empty]" gets that fault whatever the mode.
    `fault(handler, number)`, when given, answers the first `fail_first` requests (all of them when 0) itself
    (see tests/faults.py).
    """

    def __init__(self, mode="ok", latency=0.0, fail_first=0, slow_s=2.0, model="loopback-llm", fault=None):
        self.mode, self.latency, self.fail_first, self.slow_s, self.model = mode, latency, fail_first, slow_s, model
        self.fault = fault
        self.requests = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # buffered writes: headers and body leave in one packet, so keep-alive replies do not wait for a
            # delayed ACK (Nagle), which would add ~40 ms to every request
            wbufsize = 1 << 16

            def log_message(self, *args):
                pass

            def _send(self, status, body: bytes, headers=()):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for key, value in headers:
                    self.send_header(key, value)
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self):
                if getattr(server, "answer_models", None) is not None:
                    return server.answer_models(self)
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, json.dumps({"object": "list", "data": [{"id": server.model}]}).encode())
                else:
                    self._send(404, b'{"error": "not found"}')

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    number = len(server.requests)
                    server.requests.append(
                        {"path": self.path, "body": body, "authorization": self.headers.get("Authorization")}
                    )
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self._answer(number, body)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _answer(self, number, body):
                time.sleep(server.latency)
                mode, early = server.mode, number < server.fail_first
                if server.fault is not None and (early or not server.fail_first):
                    return server.fault(self, number)
                text = json.dumps(body.get("messages") or body.get("prompt"))
                for trigger in ("500", "malformed", "empty"):  # a fault for one record: its text says which
                    if f"[{trigger}]" in text:
                        mode = trigger
                if mode == "404" or self.path not in ("/v1/chat/completions", "/v1/completions"):
                    return self._send(404, b'{"error": {"message": "The model does not exist."}}')
                if mode == "500" or (mode == "flaky" and early):
                    return self._send(500, b'{"error": "internal error"}')
                if mode == "429" and early:
                    return self._send(429, b'{"error": "slow down"}', [("Retry-After", "0.05")])
                if mode == "slow" and early:
                    time.sleep(server.slow_s)
                if mode == "malformed":
                    return self._send(200, b'{"choices": [{"message": ')
                chat = self.path.endswith("/chat/completions")
                user = body["messages"][-1]["content"] if chat else body["prompt"].rsplit("\n\n", 1)[-1]
                content = "" if mode == "empty" else fused_reply(user)
                choice = {
                    "index": 0,
                    "finish_reason": "stop",
                    **({"message": {"role": "assistant", "content": content}} if chat else {"text": content}),
                }
                reply = {
                    "id": f"r{number}",
                    "object": "chat.completion" if chat else "text_completion",
                    "model": body.get("model"),
                    "choices": [choice],
                    "usage": {
                        "prompt_tokens": 50,
                        "completion_tokens": len(content.split()),
                        "total_tokens": 50 + len(content.split()),
                    },
                }
                self._send(200, json.dumps(reply).encode())

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256  # the default backlog of 5 drops connections of a burst of clients

            def handle_error(self, request, client_address):
                pass  # clients that give up (deadlines, byte caps) break the pipe of a fault: expected here

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def prompts(n=6, caption="a dog on a beach", tags=("dog", "beach")):
    template = PromptTemplate()
    return [template.render(f"Rex the dog plays in Brighton, photo {i}.", caption, list(tags)) for i in range(n)]


def backend(server, **kw):
    return OpenAIBackend(
        kw.pop("model", None),
        Sampling(max_tokens=32),
        server.url,
        api=kw.pop("api", "chat"),
        concurrency=kw.pop("concurrency", 4),
        timeout=kw.pop("timeout", 5.0),
        retries=kw.pop("retries", 2),
        backoff=kw.pop("backoff", 0.01),
        **kw,
    )


# --------------------------------------------------------------------------- OpenAI-compatible backend


@pytest.mark.parametrize("api", ["chat", "completion"])
def test_server_backend_speaks_both_protocols(api):
    with LoopbackLLMServer() as server:
        llm = backend(server, api=api)
        batch = prompts()
        results = llm.generate(batch, seeds=list(range(100, 106)))
        llm.close()
    assert llm.model == "loopback-llm"  # no --llm-model: the server's first model
    assert [r.error for r in results] == [None] * 6
    for i, (prompt, result) in enumerate(zip(batch, results)):
        assert clean_generation(result.text, prompt) == f"Rex the dog plays in Brighton, photo {i} showing dog, beach."
    bodies = {r["body"]["seed"]: r for r in server.requests}
    assert sorted(bodies) == list(range(100, 106))
    first = bodies[100]
    if api == "chat":
        assert first["path"] == "/v1/chat/completions"
        assert first["body"]["messages"][0] == {"role": "system", "content": DEFAULT_INSTRUCTION}
        assert first["body"]["messages"][1]["content"] == (
            "Raw text: Rex the dog plays in Brighton, photo 0.\nCaption: a dog on a beach\nTags: dog, beach"
        )
    else:
        assert first["path"] == "/v1/completions"
        assert first["body"]["prompt"].endswith(f"Tags: dog, beach\n{ANSWER_CUE}") and first["body"]["stop"]
    assert first["body"]["max_tokens"] == 32 and first["body"]["temperature"] == 0.0
    assert llm.stats.tokens > 0 and llm.stats.prompts == 6


def test_requests_run_concurrently():
    with LoopbackLLMServer(latency=0.2) as server:
        llm = backend(server, concurrency=8, model="m")
        start = time.perf_counter()
        results = llm.generate(prompts(16), list(range(16)))
        elapsed = time.perf_counter() - start
        llm.close()
    assert all(r.error is None for r in results)
    assert server.max_in_flight == 8
    assert elapsed < 16 * 0.2 / 3  # serial would take 3.2 s; 8 at a time about 0.4 s


def test_slow_reply_times_out_then_the_retry_succeeds():
    with LoopbackLLMServer(mode="slow", fail_first=1, slow_s=1.5) as server:
        llm = backend(server, concurrency=1, timeout=0.5, model="m")
        (result,) = llm.generate(prompts(1), [7])
        llm.close()
    assert result.error is None and result.attempts == 2 and "Rex" in result.text
    assert llm.stats.retries == 1


def test_slow_reply_past_every_retry_is_a_per_prompt_failure():
    with LoopbackLLMServer(mode="slow", fail_first=100, slow_s=1.0) as server:
        llm = backend(server, concurrency=2, timeout=0.3, retries=1, model="m")
        results = llm.generate(prompts(2), [1, 2])
        llm.close()
    assert [r.error.split(":")[0] for r in results] == ["timeout", "timeout"]
    assert [r.attempts for r in results] == [2, 2]


@pytest.mark.parametrize("mode", ["flaky", "429"])
def test_transient_errors_are_retried_with_backoff(mode):
    with LoopbackLLMServer(mode=mode, fail_first=3) as server:
        llm = backend(server, concurrency=1, retries=3, model="m")
        results = llm.generate(prompts(2), [1, 2])
        llm.close()
    assert all(r.error is None for r in results)
    assert len(server.requests) == 5 and llm.stats.retries == 3


@pytest.mark.parametrize("mode,kind", [("500", "http_500"), ("malformed", "malformed")])
def test_persistent_errors_fail_the_prompt_after_bounded_retries(mode, kind):
    with LoopbackLLMServer(mode=mode) as server:
        llm = backend(server, concurrency=2, retries=2, model="m")
        results = llm.generate(prompts(3), [1, 2, 3])
        llm.close()
    assert [r.error.split(":")[0] for r in results] == [kind] * 3
    assert len(server.requests) == 3 * 3  # one try and two retries each, no more
    assert llm.stats.failed == 3 and llm.stats.errors == {kind: 3}


def test_empty_content_comes_back_as_empty_text():
    with LoopbackLLMServer(mode="empty") as server:
        llm = backend(server, model="m")
        (result,) = llm.generate(prompts(1), [1])
        llm.close()
    assert result.error is None and result.text == "" and clean_generation(result.text) == ""


def test_wrong_model_or_url_stops_the_run():
    with LoopbackLLMServer(mode="404") as server:
        llm = backend(server, model="no-such-model")
        with pytest.raises(RsynError, match="HTTP 404"):
            llm.generate(prompts(4), [1, 2, 3, 4])
        llm.close()


def test_unreachable_server_stops_the_run():
    with LoopbackLLMServer() as server:
        url = server.url
    llm = OpenAIBackend("m", Sampling(), url, concurrency=2, timeout=1, retries=1, backoff=0.01)
    with pytest.raises(RsynError, match="cannot connect"):
        llm.generate(prompts(2), [1, 2])
    llm.close()


def _reply(body, status=200, headers=()):
    """A fault that answers with this body (bytes, or an object sent as JSON)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()

    def answer(h, number):
        h._send(status, data, headers)

    return answer


def _chat(content, **extra):
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}], **extra}


def test_timeout_bounds_the_whole_request_of_a_dripping_server():
    # each byte comes within any per-read timeout: --llm-timeout must still end the request
    for fault in (faults.drip_body, faults.drip_headers):
        with LoopbackLLMServer(fault=lambda h, n, fault=fault: fault(h, every=0.2, limit_s=6)) as server:
            llm = backend(server, model="m", timeout=1.0, retries=0, concurrency=2)
            start = time.perf_counter()
            results = llm.generate(prompts(2), [1, 2])
            seconds = time.perf_counter() - start
            llm.close()
        assert [r.error.split(":")[0] for r in results] == ["timeout", "timeout"], results
        assert seconds < 1.0 + 0.7, (fault.__name__, seconds)


@pytest.mark.parametrize("shape", ["chunked", "declared", "close"])
def test_a_huge_reply_is_never_read_whole(shape):
    import tracemalloc

    sent = []

    def fault(h, n):
        sent.append(
            faults.stream_huge(
                h, chunked=shape == "chunked", declared=shape == "declared", content_type="application/json"
            )
        )

    with LoopbackLLMServer(fault=fault) as server:
        llm = backend(server, model="m", retries=2, max_reply_bytes=1 << 20)
        tracemalloc.start()
        start = time.perf_counter()
        (result,) = llm.generate(prompts(1), [1])
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        llm.close()
    assert result.error.startswith("too_large") and result.attempts == 1  # not retried: it would be as big
    assert seconds < 3 and peak < 8 << 20, (seconds, peak)  # a 1 GiB reply: ~1 MiB read, then hung up
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    "body,why",
    [
        (_chat("A dog.", usage={"completion_tokens": "many"}), None),  # usage only feeds --stats: ignored
        (_chat("A dog.", usage={"completion_tokens": -3}), None),
        (_chat("A dog.", usage="lots"), None),
        (_chat(5), "content is not text"),
        (_chat({"text": "x"}), "content is not text"),
        (_chat([{"type": "text", "text": 7}]), "content part"),
        ({"choices": "A dog."}, "no `choices` list"),
        ({"choices": []}, "no `choices` list"),
        ({"choices": ["A dog."]}, "`choices[0]` is not an object"),
        ({"choices": [{"message": "A dog."}]}, "`choices[0].message` is not an object"),
        ({"result": "A dog."}, "no `choices` list"),
        (["A dog."], "not a JSON object"),
        ("A dog.", "not a JSON object"),
        (b"\xff\xfe not json", "not JSON"),
        (b'{"choices": [{"message": {"content": "A do', "not JSON"),
    ],
)
def test_no_field_of_a_reply_is_trusted(body, why):
    with LoopbackLLMServer(fault=_reply(body)) as server:
        llm = backend(server, model="m", retries=0)
        (result,) = llm.generate(prompts(1), [1])
        llm.close()
    if why is None:
        assert result.error is None and result.text == "A dog." and result.tokens == 0
    else:
        assert result.error.startswith("malformed: ") and why in result.error, result.error


@pytest.mark.parametrize(
    "retry_after", ["inf", "nan", "1e999", "-5", "soon", "Wed, 21 Oct 2015 07:28:00 GMT", "9" * 40]
)
def test_garbage_retry_after_is_ignored(retry_after):
    fault = _reply({"error": "slow down"}, status=429, headers=[("Retry-After", retry_after)])
    with LoopbackLLMServer(fault=fault, fail_first=1) as server:
        llm = backend(server, model="m", retries=1, concurrency=1)
        start = time.perf_counter()
        (result,) = llm.generate(prompts(1), [1])
        seconds = time.perf_counter() - start
        llm.close()
    assert result.error is None and result.attempts == 2 and seconds < 2, (result, seconds)


def test_resets_and_redirects_are_failures_not_exceptions():
    with LoopbackLLMServer(fault=lambda h, n: faults.reset(h)) as server:
        llm = backend(server, model="m", retries=1)
        (result,) = llm.generate(prompts(1), [1])
        llm.close()
    assert result.error.startswith("transport") and result.attempts == 2
    with LoopbackLLMServer(fault=lambda h, n: faults.redirect(h, "/v1/elsewhere")) as server:
        llm = backend(server, model="m", retries=1)
        (result,) = llm.generate(prompts(1), [1])
        llm.close()
    assert result.error.startswith("http_302")


def test_the_api_key_is_sent():
    with LoopbackLLMServer() as server:
        llm = backend(server, model="m", api_key="sk-test")
        (result,) = llm.generate(prompts(1), [1])
        llm.close()
    assert result.error is None and server.requests[0]["authorization"] == "Bearer sk-test"


def test_served_model_list_is_not_trusted():
    for body in ({"data": [{"id": 5}]}, {"data": "x"}, [], b"not json", {"data": [{"id": "x" * 5000}]}):
        with LoopbackLLMServer() as server:
            server.model = body  # what GET /models answers is below

            def models(h, body=body):
                h._send(200, body if isinstance(body, bytes) else json.dumps(body).encode())

            server.answer_models = models
            with pytest.raises(RsynError, match="GET /models did not name one"):
                OpenAIBackend(None, Sampling(), server.url, timeout=2, retries=0)


def test_syn_text_is_capped_in_characters():
    # a "word" can be as long as the reply: the word cap alone does not bound syn_text
    assert clean_generation("x" * 5_000_000) == "x" * 1000
    assert len(clean_generation("A dog. " + "y" * 5000, max_chars=100)) == 100
    source = "The dog runs on the sunny beach near the old pier " * 50
    cut = clean_generation(source, max_words=1000, max_chars=120)
    assert 60 < len(cut) <= 120 and source.startswith(cut + " ")  # at a word's end
    assert clean_generation("A dog runs.", max_chars=1000) == "A dog runs."


def test_base_url_forms():
    assert normalize_base_url("http://h:8000") == "http://h:8000/v1"
    assert normalize_base_url("http://h:8000/v1/") == "http://h:8000/v1"
    assert normalize_base_url("http://h:8000/v1/chat/completions") == "http://h:8000/v1"
    assert normalize_base_url("https://api.example.com/openai/v1") == "https://api.example.com/openai/v1"
    with pytest.raises(RsynError):
        normalize_base_url("localhost:8000")


def test_vllm_backend_refuses_cpu_with_one_line():
    with pytest.raises(RsynError, match="needs a CUDA GPU"):
        open_backend("vllm", "some/model", Sampling(), device="cpu")
    with pytest.raises(RsynError, match="--llm-backend"):
        open_backend("llamacpp", "x", Sampling())
    with pytest.raises(RsynError, match="needs --llm-url"):
        open_backend("openai", "x", Sampling())


# --------------------------------------------------------------------------- transformers backend


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    import torch

    from rsyn.testing import build_tiny_gpt2

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model gains nothing from threads; on a shared machine they wait for each other
    yield build_tiny_gpt2(tmp_path_factory.mktemp("gpt2"))
    torch.set_num_threads(before)


def test_hf_backend_generates_deterministically_with_a_seed(tiny_gpt2):
    greedy = HFBackend(tiny_gpt2, Sampling(max_tokens=12), batch_size=4)
    a = greedy.generate(prompts(5), [1, 2, 3, 4, 5])
    b = greedy.generate(prompts(5), [1, 2, 3, 4, 5])
    assert [r.text for r in a] == [r.text for r in b]
    assert all(r.error is None and r.text and r.tokens == 12 for r in a)
    assert greedy.api == "completion"  # the tiny GPT-2 has no chat template
    assert greedy.stats.truncated_prompts == 10  # its context is 128 tokens: prompts keep their end
    sampled = HFBackend(tiny_gpt2, Sampling(max_tokens=12, temperature=1.0, top_p=0.95), batch_size=4)
    c = [r.text for r in sampled.generate(prompts(5), [1, 2, 3, 4, 5])]
    d = [r.text for r in sampled.generate(prompts(5), [1, 2, 3, 4, 5])]
    e = [r.text for r in sampled.generate(prompts(5), [9, 2, 3, 4, 5])]
    assert c == d and c != e


def test_hf_backend_keeps_half_a_small_context_for_the_prompt(tiny_gpt2):
    llm = HFBackend(tiny_gpt2, Sampling(max_tokens=160))  # the tiny GPT-2 has 128 positions
    assert llm.sampling.max_tokens == 64 and "context of 128 tokens" in llm.notice
    (result,) = llm.generate(prompts(1), [1])
    assert result.error is None and result.tokens <= 64


def test_hf_backend_uses_the_chat_template_when_there_is_one(tiny_gpt2):
    from rsyn.models.lm import load_causal_lm

    llm = HFBackend(tiny_gpt2, Sampling(max_tokens=4), api="auto")
    _, tokenizer = load_causal_lm(tiny_gpt2, "cpu")
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    try:
        chat = HFBackend(tiny_gpt2, Sampling(max_tokens=4), api="auto")
        assert llm.api == "completion" and chat.api == "chat"
        ids = chat._encode(prompts(1)[0])
        assert tokenizer.decode(ids).startswith("<system>You rewrite") and tokenizer.decode(ids).endswith("<assistant>")
    finally:
        tokenizer.chat_template = None


# --------------------------------------------------------------------------- cleaning and prompts


@pytest.mark.parametrize(
    "raw,clean",
    [
        ('Sure! Here is the description:\n\n"A red car in Paris."', "A red car in Paris."),
        ("Description: A red car in Paris.", "A red car in Paris."),
        ("**Synthetic text:** “A red car in Paris.”", "A red car in Paris."),
        ("A red car\nin Paris.\n\nNote: I ignored the tag 'cat'.", "A red car in Paris."),
        ("A red car in Paris.\nRaw text: something else", "A red car in Paris."),
        (": - A red car in Paris.", "A red car in Paris."),
        ("   \n\n  ", ""),
        ('"" ** ...', ""),
        (None, ""),
    ],
)
def test_clean_generation(raw, clean):
    assert clean_generation(raw) == clean


def test_clean_removes_an_echoed_prompt_and_caps_the_length():
    prompt = prompts(1)[0]
    assert clean_generation(prompt.completion + " A dog in Brighton.", prompt) == "A dog in Brighton."
    long = "One two three four. " * 10 + "five six seven"
    capped = clean_generation(long, max_words=18)
    assert capped == ("One two three four. " * 4).strip()  # cut at the last sentence end inside the cap
    assert clean_generation("word " * 50, max_words=7) == "word word word word word word word"


def test_prompt_file_instruction_or_template(tmp_path):
    instruction = tmp_path / "instruction.txt"
    instruction.write_text("Merge the inputs into one sentence.\n")
    p = PromptTemplate.from_file(str(instruction)).render("Raw one.", None, ["dog"])
    assert p.system == "Merge the inputs into one sentence." and p.user == "Raw one.\nTags: dog".replace(
        "Raw one.", "Raw text: Raw one."
    )
    template = tmp_path / "template.txt"
    template.write_text(
        "You fuse texts. {not a placeholder}\n---\nText: {raw_text}\nCaption: {caption}\nTags: {tags}\nAnswer:"
    )
    t = PromptTemplate.from_file(str(template))
    p = t.render("Raw one.", None, ["dog", "ball"])
    assert p.system == "You fuse texts. {not a placeholder}"
    assert p.user == "Text: Raw one.\nTags: dog, ball\nAnswer:"  # no caption: its line is left out
    assert p.messages()[0]["role"] == "system" and p.completion.endswith("Answer:")
    with pytest.raises(RsynError, match="empty"):
        (tmp_path / "empty.txt").write_text(" \n")
        PromptTemplate.from_file(str(tmp_path / "empty.txt"))
