"""What decoding to do, without loading anything: `DecoderConfig`, the bundled LM's paths and the decoding
flags the commands share. Torch-free, so that clients parse their flags fast; `asr.decoding` does the work.

The commands (asr-serve, asr-transcribe's local mode, python -m asr.evaluate) decode with beam search, the
bundled word 3-gram LM (`models/lm.arpa`, built by `make lm`) and its lexicon unless told otherwise; the
library's own default (`DecoderConfig()`) is greedy.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

MODELS = Path(__file__).resolve().parent.parent / "models"
BUNDLED_LM = MODELS / "lm.arpa"  # `make lm`'s word 3-gram, shipped beside the bundled model
BUNDLED_LEXICON = MODELS / "lexicon.txt"  # its words, spelt for flashlight


@dataclass(frozen=True)
class DecoderConfig:
    method: str = "greedy"  # "greedy" (argmax path) or "beam" (flashlight beam search); hotwords imply beam
    beam_size: int = 32  # hypotheses kept after each frame
    beam_size_token: int | None = None  # tokens tried per hypothesis and frame (None: all of them)
    beam_threshold: float = 25.0  # hypotheses scoring this far below the best one are dropped
    lexicon_path: str | None = None  # lexicon file ("word w o r d |" lines); None: the LM's words, or none
    lm_path: str | None = None  # word-level KenLM model (ARPA or binary); None: no LM
    lm_weight: float = 0.5  # weight of the LM's log10 scores against the acoustic natural-log scores
    word_score: float = 0.0  # added per word (lexicon decoding)
    sil_score: float = 0.0  # added per frame decoded as a word separator
    nbest: int = 1  # alternatives returned by end()
    log_add: bool = False  # merge equal hypotheses by log-add instead of max

    def __post_init__(self) -> None:
        if self.method not in ("greedy", "beam"):
            raise ValueError(f"method must be 'greedy' or 'beam', not {self.method!r}")
        if self.method == "greedy" and (self.lm_path or self.lexicon_path):
            raise ValueError("an LM or a lexicon needs method='beam'")
        if self.lm_path and self.lm_weight <= 0:
            raise ValueError("lm_weight must be positive with an LM")
        if self.beam_size < 1 or self.nbest < 1:
            raise ValueError("beam_size and nbest must be at least 1")

    @classmethod
    def bundled(cls, **changes) -> DecoderConfig:
        """Beam search with the bundled LM and lexicon: the commands' default decoding."""
        return cls(method="beam", lm_path=str(BUNDLED_LM), lexicon_path=str(BUNDLED_LEXICON), **changes)

    def describe(self) -> str:
        """One line for logs and reports: 'greedy', or 'beam 32, LM path (weight 0.5)'."""
        if self.method == "greedy":
            return "greedy"
        how = f"beam {self.beam_size}"
        if self.lm_path:
            how += f", LM {self.lm_path} (weight {self.lm_weight:g})"
        elif self.lexicon_path:
            how += f", lexicon {self.lexicon_path}, no LM"
        else:
            how += ", no LM, no lexicon"
        return how

    @property
    def uses_lexicon(self) -> bool:
        return bool(self.lexicon_path or self.lm_path)


def add_decoder_args(group) -> None:
    """The decoding flags every command shares (asr-serve, asr-transcribe, python -m asr.evaluate)."""
    group.add_argument(
        "--decoder",
        choices=("greedy", "beam"),
        default="beam",
        help="CTC decoding (default: beam search with the bundled LM and lexicon)",
    )
    group.add_argument(
        "--lm", help="word KenLM model, ARPA or binary (default: the bundled one; 'none': no LM)"
    )
    group.add_argument(
        "--lexicon",
        help="words beam search may produce (default: the bundled lexicon with the bundled LM, else the LM's "
        "words; with --lm none, none: lexicon-free)",
    )
    group.add_argument("--lm-weight", type=float, default=DecoderConfig.lm_weight, help="LM weight")
    group.add_argument("--word-score", type=float, default=DecoderConfig.word_score, help="added per word")
    group.add_argument("--beam-size", type=int, default=DecoderConfig.beam_size, help="beam search width")


def decoder_from_args(args: argparse.Namespace) -> DecoderConfig:
    """`add_decoder_args`' flags -> DecoderConfig. Beam search uses the bundled LM and lexicon unless --lm or
    --lexicon say otherwise; greedy takes neither. Raises ValueError for flags that contradict."""
    if args.decoder == "greedy":
        if args.lm or args.lexicon:
            raise ValueError("--lm and --lexicon are for --decoder beam")
        return DecoderConfig()

    lm = args.lm or str(BUNDLED_LM)
    lexicon = args.lexicon or (str(BUNDLED_LEXICON) if not args.lm else None)  # another LM: its own words
    lm, lexicon = (None if path == "none" else path for path in (lm, lexicon))
    for path in (lm, lexicon):
        if path and not Path(path).is_file():
            raise ValueError(f"{path}: no such file")
    return DecoderConfig(
        method="beam",
        beam_size=args.beam_size,
        lm_path=lm,
        lexicon_path=lexicon,
        lm_weight=args.lm_weight,
        word_score=args.word_score,
    )
