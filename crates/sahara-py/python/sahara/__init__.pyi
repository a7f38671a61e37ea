"""Type stubs of sahara's Python bindings (the module is built from crates/sahara-py)."""

from os import PathLike
from typing import Any, Iterable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

__version__: str

class SaharaError(Exception):
    """An error of sahara that is not a bad argument or a missing file."""

class Ablation:
    """One head's ablation: target q (query), k (key/value group) or v (attention output);
    mode scale (multiply by epsilon) or mean (replace by the mean over heads)."""

    layer: int
    head: int
    target: str
    mode: str
    epsilon: float
    def __init__(
        self, layer: int, head: int, target: str = "q", mode: str = "scale", epsilon: float = 1e-5
    ) -> None: ...

Heads = Union[str, Sequence[Union[Ablation, Tuple[int, int]]]]
"""Heads as "L:H,L:H", (layer, head) pairs (ablated as q scale 1e-5 unless said), or Ablations."""

class Prompt:
    """A query rendered and encoded for one model; reusable across calls."""

    query: str
    text: str
    ids: list[int]
    def __len__(self) -> int: ...

Queries = Sequence[Union[str, Prompt]]

class Ships:
    """Every query's Ships."""

    scores: npt.NDArray[np.float64]
    """(queries, layers, heads): KL in nats; NaN where a head was not scored."""
    mean: npt.NDArray[np.float64]
    """(layers, heads): the mean over the queries."""
    def top(self, k: int = 10) -> list[Tuple[int, int, float, int]]:
        """(layer, head, mean Ships, queries with the head in their top k), best first."""
    def to_jsonl(self, path: Union[str, PathLike[str]], top: int = 10) -> None:
        """The lines `sahara ships --out` writes."""
    def __len__(self) -> int: ...

class Attribution:
    """The heads of a Sahara search, step by step."""

    selected: list[Tuple[int, int]]
    step_scores: list[float]
    scores: npt.NDArray[np.float64]
    """(steps, layers, heads): every candidate's score (degrees); NaN for heads already chosen."""
    def to_json(self, path: Union[str, PathLike[str]]) -> None:
        """The document `sahara attribute --out` writes."""

class Evaluation:
    """The result of Model.evaluate."""

    responses: list[dict[str, Any]]
    """One dict per response, with the fields of a `sahara eval` line."""
    def table(self) -> list[dict[str, Any]]:
        """One dict per condition, with the fields of `sahara eval`'s summary."""

class Model:
    """A model, loaded once: a folder, a hub id in the local cache, a GGUF file, or
    "builtin:organism"."""

    source: str
    layers: int
    heads: int
    kv_heads: int
    family: str
    config: dict[str, Any]
    def __init__(
        self, source: str, dtype: str = "auto", device: str = "cpu", adapter: Optional[str] = None
    ) -> None: ...
    @staticmethod
    def organism() -> "Model": ...
    def encode(
        self, queries: Iterable[str], template: Optional[str] = None, system: Optional[str] = None
    ) -> list[Prompt]: ...
    def ships(
        self,
        queries: Queries,
        target: str = "q",
        mode: str = "scale",
        epsilon: float = 1e-5,
        layers: Optional[Tuple[int, int]] = None,
        heads: Optional[Tuple[int, int]] = None,
        template: Optional[str] = None,
        kl: str = "exact",
    ) -> Ships: ...
    def attribute(
        self,
        queries: Queries,
        steps: int = 3,
        rank: int = 1,
        target: str = "q",
        mode: str = "scale",
        epsilon: float = 1e-5,
        template: Optional[str] = None,
    ) -> Attribution: ...
    def generate(
        self,
        prompts: Queries,
        ablate: Optional[Heads] = None,
        max_new_tokens: int = 64,
        temperature: Optional[float] = None,
        top_k: Optional[int] = None,
        seed: int = 0,
        batch_size: int = 16,
        template: Optional[str] = None,
    ) -> list[str]: ...
    def logits(
        self, prompts: Queries, ablate: Optional[Heads] = None, template: Optional[str] = None
    ) -> npt.NDArray[np.float32]:
        """(prompts, vocab): next-token logits at the last position."""
    def hidden_states(
        self, prompts: Queries, ablate: Optional[Heads] = None, template: Optional[str] = None
    ) -> npt.NDArray[np.float32]:
        """(prompts, hidden): the final hidden state at the last position."""
    def evaluate(
        self,
        harmful: Queries,
        benign: Optional[Queries] = None,
        conditions: Optional[Mapping[str, Heads]] = None,
        judges: Optional[Sequence[str]] = None,
        max_new_tokens: int = 64,
        batch_size: int = 16,
        target: str = "q",
        mode: str = "scale",
        epsilon: float = 1e-5,
        template: Optional[str] = None,
    ) -> Evaluation: ...
    def surgery(
        self,
        out_dir: Union[str, PathLike[str]],
        heads: Heads,
        target: str = "q",
        mode: str = "scale",
        epsilon: float = 1e-5,
        force: bool = False,
    ) -> dict[str, Any]: ...

def load_queries(data: str, column: Optional[str] = None, limit: Optional[int] = None) -> list[str]:
    """The queries of a data file as --data reads it, or builtin:harmful / builtin:benign."""
