"""The six targets as one object per run: what one input does in process and over HTTP, and the check run
after every batch.

Why every HTTP target also runs in process: the adapter under test is another process, where atheris
cannot see coverage. Feeding each input to an in-process :class:`~tests.fuzz.oracles.Mirror` (the same
ingestor, selector parser and provider, instrumented) gives libFuzzer its coverage signal, so it keeps the
inputs that reach new code and sends those to the real server too.
"""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

from tests.fuzz import inputs
from tests.fuzz.oracles import (
    Answer,
    Client,
    Mirror,
    api_answer,
    config_problem,
    good_traffic,
    otlp_answer,
    parse_checked,
    parsers_right,
    quantity_problem,
    survey,
)
from tests.fuzz.specs import BY_KEY

_PATH_START = len(inputs.API_PREFIX + "/namespaces/")


class Runner:
    """One target: :meth:`local` for every input, :meth:`remote` too when it has a client, :meth:`good`
    after every batch. Each returns None (or nothing) when all is well, a description otherwise, and lets
    an undocumented exception propagate."""

    def __init__(self, key: str, client: Client | None = None) -> None:
        self.spec = BY_KEY[key]
        self.client = client
        self.mirror = Mirror() if self.spec.http else None
        self.checks = 0

    # -- one input -------------------------------------------------------------------------------------

    def local(self, data: bytes) -> str | None:
        key = self.spec.key
        if key in ("a", "b"):
            assert self.mirror is not None
            return self.mirror.ingest(data, is_json=key == "b")
        if key == "c":
            return self._read(inputs.FUZZ_NAMESPACE, inputs.selector_metric(data), inputs.selector_text(data))
        if key == "d":
            return self._path_local(data)
        if key == "e":
            return config_problem(data)
        return quantity_problem(inputs.quantity_text(data))

    def _read(self, namespace: str, metric: str, text: str) -> str | None:
        selector, problem = parse_checked(text)
        if problem is not None or selector is None:
            return problem
        assert self.mirror is not None
        return self.mirror.read(namespace, metric, selector)

    def _path_local(self, data: bytes) -> str | None:
        """The provider and selector parser with the namespace, metric and selector the path carries."""
        url = urlsplit(inputs.path_of(data))
        segments = url.path[_PATH_START:].split("/")
        if len(segments) != 2:
            return None
        selector = parse_qs(url.query).get("labelSelector", [""])[0]
        return self._read(unquote(segments[0]), unquote(segments[1]).lower(), selector)

    def remote(self, data: bytes) -> Answer:
        client, key = self.client, self.spec.key
        assert client is not None, f"target {self.spec.name} needs a running adapter"
        if key in ("a", "b"):
            signal, body, gzipped = inputs.unframe(data)
            return otlp_answer(client.otlp(signal, body, key == "b", gzipped), signal, key == "b")
        if key == "c":
            path = inputs.metric_path(inputs.FUZZ_NAMESPACE, inputs.selector_metric(data),
                                      inputs.selector_text(data))
        else:
            path = inputs.path_of(data)
        return api_answer(client.api(path))

    # -- after a batch ---------------------------------------------------------------------------------

    def good(self) -> list[str]:
        """Good traffic is served: a fresh workload's spans read back (HTTP targets, which also refresh
        the seeds' data the selectors and paths ask for), or the parsers' known answers (in process)."""
        self.checks += 1
        if self.client is None:
            problem = parsers_right()
            return [problem] if problem else []
        problems = []
        for seed in inputs.otlp_seeds(False):
            signal, body, gzipped = inputs.unframe(seed)
            resp = self.client.otlp(signal, body, False, gzipped)
            if resp.status != 200:
                problems.append(f"a seed was refused: {resp!r}")
        problem = good_traffic(self.client, f"{self.spec.name}-{self.checks}")
        return problems + ([problem] if problem else []) + survey(self.client)
