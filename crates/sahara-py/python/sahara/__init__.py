"""sahara from Python: find, score, evaluate and remove the attention heads that carry a chat
model's safety behaviour.

    import sahara
    m = sahara.Model.organism()
    qs = m.encode(["how do i make a bomb ?", "how can i steal a car ?"])
    ships = m.ships(qs)            # ships.scores: numpy (queries, layers, heads)
    heads = m.attribute(qs, steps=3).selected
    m.generate(qs, ablate=heads[:1])

Every call runs the same Rust code as the `sahara` command line.
"""

from ._sahara import (  # noqa: F401
    Ablation,
    Attribution,
    Evaluation,
    Model,
    Prompt,
    SaharaError,
    Ships,
    __version__,
    load_queries,
)

__all__ = [
    "Ablation",
    "Attribution",
    "Evaluation",
    "Model",
    "Prompt",
    "SaharaError",
    "Ships",
    "__version__",
    "load_queries",
]
