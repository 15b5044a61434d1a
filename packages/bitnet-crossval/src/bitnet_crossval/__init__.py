"""bitnet-crossval: is our engine right? Compare it with llama.cpp (llama-cpp-python, in-process) or bitnet.cpp
(a user's build, or its recorded outputs): token parity, logits, KL divergence, top-1, perplexity, greedy
continuation, optionally speed; a versioned JSON receipt and an HTML report.

    from bitnet_crossval import CrossValidationConfig, run_crossval, render_html
    receipt = run_crossval(CrossValidationConfig(model=Path("m.gguf"), reference="llama-cpp"))
    print(receipt.verdict); Path("r.html").write_text(render_html(receipt))
"""

from bitnet_crossval.checks import Check
from bitnet_crossval.config import REFERENCES, CrossValidationConfig, ToleranceConfig
from bitnet_crossval.errors import CrossValError, ReferenceRunError, ReferenceUnavailableError
from bitnet_crossval.references import BitnetCppReference, LlamaCppReference, Reference, make_reference
from bitnet_crossval.report import render_html
from bitnet_crossval.runner import SCHEMA, Receipt, run_crossval

__all__ = [
    "REFERENCES",
    "SCHEMA",
    "BitnetCppReference",
    "Check",
    "CrossValError",
    "CrossValidationConfig",
    "LlamaCppReference",
    "Receipt",
    "Reference",
    "ReferenceRunError",
    "ReferenceUnavailableError",
    "ToleranceConfig",
    "make_reference",
    "render_html",
    "run_crossval",
]
