"""helpers: the small package every notebook of the book imports.

One module per thing the learner does:

=================  ======================================================
``env``            what this machine can run (GPU, 4-bit, LMDeploy) and the profile to use
``internvl``       what a model folder says: special tokens, prompts, chat template, tiling settings
``data``           load, split, validate and describe CLoT-style image-caption datasets
``tiling``         InternVL2's dynamic 448-px tiling rule
``tiny``           build the tiny (or full-size, random) InternVL2 checkpoint
``infer``          ask a model about images: LMDeploy on GPU, ``chat()`` elsewhere
``config``         write XTuner's QLoRA config from parameters
``memory``         what QLoRA costs in memory, from the real architecture
``train``          run XTuner training with progress, checkpoints and resume
``convert``        XTuner checkpoint -> official InternVL2 directory (LoRA merged)
``compare``        before/after metrics (chrF, ROUGE-L, perplexity) and reports
``plots``          the figures the notebooks show
``book``, ``site`` the papermill runner and sweeps; the jupyter-book site
``compat``         small documented fixes for the pinned stack
=================  ======================================================

Nothing is imported eagerly: ``import helpers`` is instant, and each notebook
imports the modules it teaches.
"""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

__version__ = "0.1.0"

PACKAGE_DIR = Path(__file__).resolve().parent
SAMPLE_DATA_DIR = PACKAGE_DIR / "sample_data" / "clot_sample"
REPO_DIR = PACKAGE_DIR.parent

__all__ = ["PACKAGE_DIR", "SAMPLE_DATA_DIR", "REPO_DIR", "repo_path", "show_source", "__version__"]


def repo_path(path: str | Path) -> Path:
    """Resolve a notebook parameter path: relative paths are relative to the repository root.

    Notebooks run with different working folders (JupyterLab: ``notebooks/``;
    papermill: wherever it was started), so every path parameter goes through
    this function.

    >>> repo_path("_build/outputs") == REPO_DIR / "_build" / "outputs"
    True
    """
    p = Path(path).expanduser()
    return p if p.is_absolute() else (REPO_DIR / p).resolve()


def show_source(obj: object) -> object:
    """Show the source of a helper in a notebook, highlighted, instead of copying it.

    The book teaches a function where it is first used, but the code lives once,
    in ``helpers``. In Jupyter this returns a rich object rendered with syntax
    highlighting; elsewhere it returns the source text.

    >>> from helpers import tiling
    >>> "def plan_tiles" in str(show_source(tiling.plan_tiles))
    True
    """
    source = inspect.getsource(obj)  # type: ignore[arg-type]
    if importlib.util.find_spec("IPython") is None:  # pragma: no cover - IPython is always there in the book env
        return source
    return _SourceCode(source)


class _SourceCode:
    """Highlighted in Jupyter (``_repr_html_``), plain in ``str()``."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __str__(self) -> str:
        return self.source

    def __repr__(self) -> str:
        return self.source

    def _repr_html_(self) -> str:
        from IPython.display import Code

        return Code(self.source, language="python")._repr_html_()
