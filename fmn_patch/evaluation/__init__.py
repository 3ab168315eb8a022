"""Layer 4, measuring: sampling, judges (a registry: ``clip``, worlds add theirs), M-Score and the MACE-style
accuracies, evaluation reports, before/after previews and grids, the NudeNet score and correction scores."""

from .correction import CorrectionScore, entropy_bits, score_correction
from .judges import ClipJudge, Judge, class_index, concept_probs, judge_names, load_judge, register_judge
from .mscore import (
    ConceptScore,
    ModelScore,
    SamplerConfig,
    acc_kept,
    concept_samples,
    evaluate,
    generate,
    judged,
)
from .preview import SampleConfig, check_prompts, preview, sample
from .report import EvalReport, ModelEntry, evaluate_patches, write_report

__all__ = [
    "ClipJudge",
    "ConceptScore",
    "CorrectionScore",
    "EvalReport",
    "Judge",
    "ModelEntry",
    "ModelScore",
    "SampleConfig",
    "SamplerConfig",
    "acc_kept",
    "check_prompts",
    "class_index",
    "concept_probs",
    "concept_samples",
    "entropy_bits",
    "evaluate",
    "evaluate_patches",
    "generate",
    "judge_names",
    "judged",
    "load_judge",
    "preview",
    "register_judge",
    "sample",
    "score_correction",
    "write_report",
]
