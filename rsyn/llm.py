"""The LLM behind `rsyn caption`'s fusion step: three backends, one interface, and the output cleaner.

- `vllm`: vLLM's offline engine, batched on the GPU (the `gpu` extra);
- `openai`: any server speaking the OpenAI completions / chat completions
  protocol (`vllm serve`, SGLang, llama.cpp server, TGI, hosted APIs): requests
  run concurrently on a thread pool, each with a timeout and bounded retries
  with exponential backoff;
- `hf`: transformers `generate`, batched (the CPU path; works on GPU too).

Every backend takes a list of `rsyn.prompts.Prompt` and per-prompt seeds and
returns one `Generation` per prompt, in order: the raw text, or the reason it
failed. A failure of one prompt is never an exception; a failure that makes
every prompt fail (server unreachable, wrong model name, missing library)
raises RsynError instead, so it stops the run with one line.
"""

from __future__ import annotations

import math
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import orjson

from rsyn.errors import RsynError, first_line
from rsyn.prompts import ANSWER_CUE, Prompt

BACKENDS = ("vllm", "openai", "hf")
APIS = ("auto", "chat", "completion")
DEFAULT_HF_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
DEFAULT_VLLM_MODEL = "meta-llama/Meta-Llama-3-8B-Instruct"
DEFAULT_MAX_REPLY_BYTES = 1 << 20  # a reply of --llm-max-tokens tokens is a few KB of JSON
DEFAULT_MAX_SYN_CHARS = 1000  # syn_text of --max-syn-words words, each of normal length, fits easily
MAX_RETRY_AFTER = 60.0  # seconds; a server's Retry-After may ask for hours

# A base model writing after our answer cue goes on with another example: stop there.
COMPLETION_STOPS = ["\nRaw text:", "\n\n\n"]


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = 160
    temperature: float = 0.0  # 0 = greedy: the same prompt gives the same text on every backend
    top_p: float = 1.0


@dataclass
class Generation:
    text: str | None = None
    error: str | None = None  # why no text came back
    tokens: int = 0  # generated tokens, when the backend says
    attempts: int = 1


@dataclass
class LLMStats:
    """Numbers for --stats: what the backend did, summed over the run."""

    prompts: int = 0
    failed: int = 0
    tokens: int = 0
    seconds: float = 0.0
    retries: int = 0
    truncated_prompts: int = 0
    errors: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        out = {
            "prompts": self.prompts,
            "failed": self.failed,
            "generated_tokens": self.tokens,
            "seconds": round(self.seconds, 3),
            "retries": self.retries,
            "truncated_prompts": self.truncated_prompts,
        }
        if self.seconds > 0:
            out["prompts_per_s"] = round(self.prompts / self.seconds, 2)
            out["tokens_per_s"] = round(self.tokens / self.seconds, 1)
        if self.errors:
            out["errors"] = dict(self.errors)
        return out


class LLMBackend:
    """One interface: `generate(prompts, seeds) -> list[Generation]`; `backend` and `model` name it.

    `submit(prompts, seeds)` starts a batch and returns a function that waits for its results: the server
    backend keeps requests in flight meanwhile, the local backends compute at once.
    """

    backend = ""

    def __init__(self, model: str, sampling: Sampling, api: str = "auto"):
        self.model = model
        self.sampling = sampling
        self.api = api
        self.stats = LLMStats()
        self._busy_until = 0.0

    def generate(self, prompts: list[Prompt], seeds: list[int]) -> list[Generation]:
        return self.submit(prompts, seeds)()

    def submit(self, prompts: list[Prompt], seeds: list[int]):
        start = time.perf_counter()
        wait = self._submit(prompts, seeds)

        def collect() -> list[Generation]:
            results = wait()
            end = time.perf_counter()
            self.stats.seconds += end - max(start, self._busy_until)  # batches in flight together count once
            self._busy_until = end
            self._account(prompts, results)
            return results

        return collect

    def _submit(self, prompts: list[Prompt], seeds: list[int]):
        results = self._generate(prompts, seeds)
        return lambda: results

    def _account(self, prompts: list[Prompt], results: list[Generation]) -> None:
        self.stats.prompts += len(prompts)
        for result in results:
            self.stats.tokens += result.tokens
            self.stats.retries += max(0, result.attempts - 1)
            if result.error is not None:
                self.stats.failed += 1
                kind = result.error.split(":")[0]
                self.stats.errors[kind] = self.stats.errors.get(kind, 0) + 1
        return results

    def _generate(self, prompts: list[Prompt], seeds: list[int]) -> list[Generation]:
        raise NotImplementedError

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- vLLM offline engine


class VLLMBackend(LLMBackend):
    """vLLM's offline engine: the whole batch goes to `LLM.chat` / `LLM.generate`, which schedules it."""

    backend = "vllm"

    def __init__(
        self,
        model: str,
        sampling: Sampling,
        api: str = "auto",
        seed: int = 0,
        device: str = "cuda:0",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        dtype: str = "auto",
    ):
        super().__init__(model, sampling, api)
        if not device.startswith("cuda"):
            raise RsynError(
                "--llm-backend vllm needs a CUDA GPU; on CPU use --llm-backend hf "
                "(or --llm-backend openai with a server elsewhere)"
            )
        try:
            from vllm import LLM, SamplingParams
        except ImportError:
            raise RsynError(
                "--llm-backend vllm: vLLM is not installed (pip install 'rsyn[gpu]' on a CUDA machine)"
            ) from None
        self._SamplingParams = SamplingParams
        engine_args = dict(
            model=model,
            seed=seed,
            dtype=dtype,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
        )
        if max_model_len:
            engine_args["max_model_len"] = max_model_len
        try:
            self.engine = LLM(**engine_args)
        except (OSError, ValueError) as exc:
            raise RsynError(f"--llm-backend vllm: cannot load {model!r}: {first_line(exc)}") from None
        if api == "auto":
            tokenizer = self.engine.get_tokenizer()
            self.api = "chat" if getattr(tokenizer, "chat_template", None) else "completion"

    def _generate(self, prompts: list[Prompt], seeds: list[int]) -> list[Generation]:
        s = self.sampling
        # one SamplingParams per prompt: each record's seed is its own, so batching does not change its text
        params = [
            self._SamplingParams(
                temperature=s.temperature,
                top_p=s.top_p,
                max_tokens=s.max_tokens,
                seed=seed,
                stop=None if self.api == "chat" else COMPLETION_STOPS,
            )
            for seed in seeds
        ]
        try:
            if self.api == "chat":
                try:
                    outputs = self.engine.chat([p.messages() for p in prompts], params, use_tqdm=False)
                except Exception as exc:  # noqa: BLE001 - only a chat-template refusal is handled here
                    if not type(exc).__module__.startswith("jinja2"):
                        raise
                    # some templates (e.g. Gemma's) refuse a system message: put the instruction in the user turn
                    merged = [[{"role": "user", "content": f"{p.system}\n\n{p.user}".strip()}] for p in prompts]
                    outputs = self.engine.chat(merged, params, use_tqdm=False)
            else:
                outputs = self.engine.generate([p.completion for p in prompts], params, use_tqdm=False)
        except ValueError as exc:  # e.g. one prompt longer than max_model_len: retry one by one to isolate it
            if len(prompts) == 1:
                return [Generation(error=f"rejected: {first_line(exc)}")]
            return [g for p, seed in zip(prompts, seeds) for g in self._generate([p], [seed])]
        results = []
        for output in outputs:
            completion = output.outputs[0] if output.outputs else None
            if completion is None:
                results.append(Generation(error="empty: no output"))
            else:
                results.append(Generation(text=completion.text, tokens=len(completion.token_ids)))
        return results


# --------------------------------------------------------------------------- OpenAI-compatible server


class ServerUnavailable(RsynError):
    pass


class OpenAIBackend(LLMBackend):
    """Concurrent requests to an OpenAI-compatible server, each with a timeout and bounded retries.

    `timeout` bounds each attempt as a whole (connect, headers, body: rsyn.net), and at most
    `max_reply_bytes` of a reply are read. Retried: connection errors, timeouts, HTTP 408/409/429/5xx and
    replies that are not the protocol's JSON. Not retried: other 4xx (the request itself is bad) and replies
    over the byte cap. Fatal for the run: 401/403/404 (wrong key, URL or model) and a server that cannot be
    reached at all after the retries. No field of a reply is trusted: a wrong type or shape is that prompt's
    failure ("malformed: ..."), never an exception.
    """

    backend = "openai"
    RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
    FATAL_STATUS = {401, 403, 404}

    def __init__(
        self,
        model: str | None,
        sampling: Sampling,
        url: str,
        api: str = "auto",
        concurrency: int = 16,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        api_key: str | None = None,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
    ):
        from rsyn.net import BoundedHTTP

        self.base_url = normalize_base_url(url)
        self.concurrency = max(1, concurrency)
        self.timeout = timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        self.max_reply_bytes = max_reply_bytes
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        # the server is the user's, on loopback or a cluster network: private addresses are expected
        self.http = BoundedHTTP(timeout=timeout, headers=headers, pool_size=self.concurrency)
        self.pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="rsyn-llm")
        self._fatal = threading.Event()
        super().__init__(model or self._served_model(), sampling, "chat" if api == "auto" else api)

    def _call(self, method: str, url: str, body: bytes | None = None):
        return self.http.request(
            method, url, body=body, until=time.monotonic() + self.timeout, max_bytes=self.max_reply_bytes
        )

    def _served_model(self) -> str:
        # `vllm serve` and most servers list what they serve: with no --llm-model, use the first one
        from rsyn.net import HTTPFailure

        try:
            reply = self._call("GET", f"{self.base_url}/models")
            if reply.status != 200:
                raise ValueError(f"HTTP {reply.status}")
            data = _json_object(reply.body).get("data")
            first = data[0] if isinstance(data, list) and data else None
            name = first.get("id") if isinstance(first, dict) else None
            if not isinstance(name, str) or not name.strip() or len(name) > 1000:
                raise ValueError("no model id in the list")
            return name
        except (HTTPFailure, ValueError) as exc:
            raise RsynError(
                f"--llm-url {self.base_url}: no --llm-model given and GET /models did not name one ({first_line(exc)})"
            ) from None

    def _submit(self, prompts: list[Prompt], seeds: list[int]):
        futures = [self.pool.submit(self._request, prompt, seed) for prompt, seed in zip(prompts, seeds)]

        def wait() -> list[Generation]:
            try:
                return [future.result() for future in futures]
            except RsynError:
                self._fatal.set()
                for future in futures:
                    future.cancel()
                raise

        return wait

    def _body(self, prompt: Prompt, seed: int) -> tuple[str, dict]:
        s = self.sampling
        body = {
            "model": self.model,
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "seed": seed,
            "n": 1,
        }
        if self.api == "chat":
            return "/chat/completions", {**body, "messages": prompt.messages()}
        return "/completions", {**body, "prompt": prompt.completion, "stop": COMPLETION_STOPS}

    def _request(self, prompt: Prompt, seed: int) -> Generation:
        from rsyn.net import HTTPFailure

        path, body = self._body(prompt, seed)
        url = self.base_url + path
        payload = orjson.dumps(body)
        jitter = random.Random(seed)  # backoff jitter spreads retries out; it never changes any output
        last = "error: no attempt"
        for attempt in range(1, self.retries + 2):
            if self._fatal.is_set():
                raise ServerUnavailable("stopped after a fatal LLM server error")
            retry_after = None
            try:
                reply = self._call("POST", url, payload)
            except HTTPFailure as exc:
                if exc.reason == "connect_failed":
                    last = f"unreachable: {exc.detail}"
                    if attempt > self.retries:
                        raise ServerUnavailable(
                            f"--llm-url {self.base_url}: cannot connect after {attempt} attempts ({exc.detail})"
                        ) from None
                elif exc.reason == "timeout":
                    last = f"timeout: no whole reply within {self.timeout:g}s"
                elif exc.reason == "too_large":
                    return Generation(error=f"too_large: reply over {self.max_reply_bytes:,} bytes", attempts=attempt)
                else:
                    last = f"transport: {exc.detail}"
            else:
                status = reply.status
                text = first_line(reply.body.decode("utf-8", "replace"))[:200]
                if status == 200:
                    generation = self._parse(reply.body, attempt)
                    if generation.error is None or not generation.error.startswith("malformed"):
                        return generation
                    last = generation.error
                elif status in self.FATAL_STATUS:
                    raise RsynError(
                        f"--llm-url {url}: HTTP {status} ({text}); check --llm-url, --llm-model and the API key"
                    )
                elif status in self.RETRY_STATUS:
                    last = f"http_{status}: {text}"
                    retry_after = _retry_after(reply)
                else:
                    return Generation(error=f"http_{status}: {text}", attempts=attempt)
            if attempt <= self.retries:
                delay = self.backoff * 2 ** (attempt - 1) * (0.5 + jitter.random())
                time.sleep(min(retry_after if retry_after is not None else delay, MAX_RETRY_AFTER))
        return Generation(error=last, attempts=self.retries + 1)

    def _parse(self, body: bytes, attempt: int) -> Generation:
        """The generation in a 200 reply; any field of the wrong type or shape is a malformed reply."""

        def malformed(why: str) -> Generation:
            return Generation(error=f"malformed: {why}", attempts=attempt)

        try:
            payload = _json_object(body)
        except ValueError as exc:
            return malformed(str(exc))
        choices = payload.get("choices")
        if not isinstance(choices, list) or not choices:
            return malformed(f"no `choices` list in the {self.api} reply")
        choice = choices[0]
        if not isinstance(choice, dict):
            return malformed("`choices[0]` is not an object")
        if self.api == "chat":
            message = choice.get("message")
            if not isinstance(message, dict):
                return malformed("`choices[0].message` is not an object")
            content = message.get("content")
            if isinstance(content, list):  # content parts, as some servers send
                texts = [part.get("text") for part in content if isinstance(part, dict)]
                if not all(isinstance(t, str) or t is None for t in texts):
                    return malformed("a content part's `text` is not text")
                content = "".join(t for t in texts if t)
        else:
            content = choice.get("text")
        if content is not None and not isinstance(content, str):
            return malformed("content is not text")
        usage = payload.get("usage")
        tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        # usage only feeds --stats: a count that is not a plain non-negative integer is unknown, i.e. 0
        if isinstance(tokens, bool) or not isinstance(tokens, int) or not 0 <= tokens <= 10**9:
            tokens = 0
        return Generation(text=content or "", tokens=tokens, attempts=attempt)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.http.close()


def _json_object(body: bytes) -> dict:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ValueError("reply is not JSON") from None
    if not isinstance(payload, dict):
        raise ValueError("reply is not a JSON object")
    return payload


def normalize_base_url(url: str) -> str:
    """'http://host:8000', '.../v1' or '.../v1/chat/completions' -> 'http://host:8000/v1'."""
    from urllib.parse import urlsplit

    url = url.strip().rstrip("/")
    for suffix in ("/chat/completions", "/completions"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise RsynError(f"--llm-url {url!r}: expected http(s)://HOST[:PORT][/v1]")
    return url if parts.path not in ("", "/") else url + "/v1"


def _retry_after(reply) -> float | None:
    """Seconds a 429/503 asks us to wait, when it says so as a plain number (dates and garbage are ignored)."""
    value = reply.headers.get("retry-after")
    try:
        seconds = float(value) if value is not None and len(value) < 32 else None
    except ValueError:
        return None
    return max(0.0, seconds) if seconds is not None and math.isfinite(seconds) else None


# --------------------------------------------------------------------------- transformers generate


class HFBackend(LLMBackend):
    """transformers `generate` on batches of prompts, left-padded; the chat template when the tokenizer has one."""

    backend = "hf"

    def __init__(
        self,
        model: str,
        sampling: Sampling,
        api: str = "auto",
        device: str = "cpu",
        dtype: str = "auto",
        batch_size: int = 16,
        seed: int = 0,
    ):
        from rsyn.models.lm import _max_positions, load_causal_lm

        super().__init__(model, sampling, api)
        self.lm, self.tokenizer = load_causal_lm(model, device, dtype)
        self.device = device
        self.batch_size = max(1, batch_size)
        self.seed = seed
        self.context = _max_positions(self.lm)
        if api == "auto":
            self.api = "chat" if getattr(self.tokenizer, "chat_template", None) else "completion"
        self.notice = None
        if self.context < 2 * sampling.max_tokens:
            # a small model (e.g. the tiny test GPT-2, 128 positions): keep half of its context for the prompt
            self.sampling = replace(sampling, max_tokens=max(1, self.context // 2))
            self.notice = (
                f"{model} has a context of {self.context} tokens: generating at most "
                f"{self.sampling.max_tokens} tokens, not {sampling.max_tokens}"
            )

    def _text(self, prompt: Prompt) -> str:
        if self.api != "chat":
            return prompt.completion
        try:
            return self.tokenizer.apply_chat_template(prompt.messages(), add_generation_prompt=True, tokenize=False)
        except Exception:  # jinja raises its own errors; e.g. Gemma's template refuses a system message
            merged = [{"role": "user", "content": f"{prompt.system}\n\n{prompt.user}".strip()}]
            return self.tokenizer.apply_chat_template(merged, add_generation_prompt=True, tokenize=False)

    def _encode_all(self, prompts: list[Prompt]) -> list[list[int]]:
        # one tokenizer call for the whole list: the Rust tokenizer works through it without Python per prompt
        texts = [self._text(p) for p in prompts]
        # a chat template writes its own special tokens; a plain completion gets the tokenizer's usual ones
        return self.tokenizer(texts, add_special_tokens=self.api != "chat", verbose=False)["input_ids"]

    def _encode(self, prompt: Prompt) -> list[int]:
        return self._encode_all([prompt])[0]

    def _generate(self, prompts: list[Prompt], seeds: list[int]) -> list[Generation]:
        import numpy as np
        import torch

        budget = self.context - self.sampling.max_tokens
        encoded = []
        for ids in self._encode_all(prompts):
            if len(ids) > budget:
                # keep the end: the image's inputs and the answer cue matter more than the instruction's first words
                ids = ids[-budget:]
                self.stats.truncated_prompts += 1
            encoded.append(ids)
        results: list[Generation | None] = [None] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))  # similar lengths pad little
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        eos = self.tokenizer.eos_token_id
        s = self.sampling
        sample = s.temperature > 0
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                width = max(len(encoded[i]) for i in batch)
                tokens = np.full((len(batch), width), pad, dtype=np.int64)
                mask = np.zeros((len(batch), width), dtype=np.int64)
                for row, index in enumerate(batch):
                    ids = encoded[index]
                    tokens[row, width - len(ids) :] = ids  # left padding: every row's new tokens start at `width`
                    mask[row, width - len(ids) :] = 1
                if sample:
                    # generate() samples from the global torch generator: seed it from the batch's own seeds
                    torch.manual_seed(sum(seeds[i] for i in batch) % (2**63))
                kwargs = (
                    dict(do_sample=True, temperature=s.temperature, top_p=s.top_p) if sample else dict(do_sample=False)
                )
                output = self.lm.generate(
                    input_ids=torch.from_numpy(tokens).to(self.device),
                    attention_mask=torch.from_numpy(mask).to(self.device),
                    max_new_tokens=s.max_tokens,
                    pad_token_id=pad,
                    **kwargs,
                )
                new = output[:, width:].cpu().numpy()
                for row, index in enumerate(batch):
                    ids = new[row]
                    if eos is not None:
                        ends = np.flatnonzero(ids == eos)
                        ids = ids[: ends[0]] if len(ends) else ids
                    text = self.tokenizer.decode(ids.tolist(), skip_special_tokens=True)
                    results[index] = Generation(text=text, tokens=int(len(ids)))
        return results  # type: ignore[return-value]


# --------------------------------------------------------------------------- choosing one


def open_backend(
    backend: str,
    model: str | None,
    sampling: Sampling,
    *,
    api: str = "auto",
    url: str | None = None,
    device: str = "cpu",
    seed: int = 0,
    concurrency: int = 16,
    timeout: float = 60.0,
    retries: int = 3,
    backoff: float = 0.5,
    batch_size: int = 16,
    api_key: str | None = None,
    max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float = 0.9,
    max_model_len: int | None = None,
    dtype: str = "auto",
) -> LLMBackend:
    if backend not in BACKENDS:
        raise RsynError(f"--llm-backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if api not in APIS:
        raise RsynError(f"--llm-api {api!r}: expected one of {', '.join(APIS)}")
    if backend == "openai":
        if not url:
            raise RsynError("--llm-backend openai needs --llm-url (e.g. http://127.0.0.1:8000/v1 for `vllm serve`)")
        return OpenAIBackend(
            model,
            sampling,
            url,
            api=api,
            concurrency=concurrency,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            api_key=api_key,
            max_reply_bytes=max_reply_bytes,
        )
    if backend == "vllm":
        return VLLMBackend(
            model or DEFAULT_VLLM_MODEL,
            sampling,
            api=api,
            seed=seed,
            device=device,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            dtype=dtype,
        )
    return HFBackend(
        model or DEFAULT_HF_MODEL, sampling, api=api, device=device, dtype=dtype, batch_size=batch_size, seed=seed
    )


# --------------------------------------------------------------------------- cleaning the output

_LABEL = re.compile(
    r"^\s*(?:\*\*)?\s*(?:synthetic\s+text|synthetic\s+caption|rewritten\s+description|description|"
    r"final\s+description|merged\s+description|caption|output|answer|response|result|text)\s*"
    r"(?:\*\*)?\s*[:：\-–]\s*(?:\*\*)?",
    re.IGNORECASE,
)
_PREAMBLE = re.compile(
    r"^\s*(?:sure|certainly|of course|okay|ok|here(?:'s| is| are)|below is)\b[^\n]*?(?::|\n|$)", re.IGNORECASE
)
_SECTION = re.compile(r"\n\s*(?:raw text|caption|tags|description|note)\s*:", re.IGNORECASE)
_QUOTES = "\"'“”‘’«»`*_"
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ufffd]")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def clean_generation(
    text: str | None, prompt: Prompt | None = None, max_words: int = 80, max_chars: int = DEFAULT_MAX_SYN_CHARS
) -> str:
    """The synthetic text in a raw LLM output, or "" when there is none.

    Removes an echoed prompt, chat preambles ("Sure! Here is ..."), labels
    ("Description:"), surrounding quotes and markdown emphasis, and anything after
    the first paragraph or a new "Raw text:" section; joins lines; cuts to
    `max_words` words, at the last sentence end inside the cap when there is one.
    """
    if not text:
        return ""
    text = _CONTROL.sub(" ", text.replace("\r\n", "\n"))
    if prompt is not None:
        for echoed in (prompt.completion, prompt.user):
            at = text.find(echoed.strip()) if echoed.strip() else -1
            if at != -1:
                text = text[at + len(echoed.strip()) :]
                break
        cue = text.find(ANSWER_CUE)
        if cue != -1 and cue < 40:
            text = text[cue + len(ANSWER_CUE) :]
    text = text.strip()
    preamble = _PREAMBLE.match(text)
    if preamble and text[preamble.end() :].strip():
        text = text[preamble.end() :].strip()
    label = _LABEL.match(text)
    if label:
        text = text[label.end() :]
    section = _SECTION.search(text)
    if section:
        text = text[: section.start()]
    text = text.strip()
    paragraph = re.split(r"\n\s*\n", text, maxsplit=1)[0]
    # a leading ":" or dash is what is left of a label or a list marker, never the start of a description
    text = " ".join(paragraph.split()).strip(_QUOTES + " ").lstrip(":;,.-–—•* ").strip(_QUOTES + " ")
    words = text.split(" ")
    if len(words) > max_words or len(text) > max_chars:
        whole = " ".join(words[:max_words])
        text = whole[:max_chars]
        ends = [m.end() for m in _SENTENCE_END.finditer(text)]
        if ends and ends[-1] > len(text) // 2:
            text = text[: ends[-1]]
        elif len(whole) > max_chars and text.rfind(" ") > len(text) // 2:
            text = text[: text.rfind(" ")]  # not in the middle of a word
    text = text.strip(_QUOTES + " ")
    return text if any(ch.isalnum() for ch in text) else ""
