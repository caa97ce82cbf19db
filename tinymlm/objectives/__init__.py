"""Objectives: what a batch is, the model it trains, its loss, cost and evaluation.

``Objective`` (in ``base``) is the contract the trainer runs; each objective is one class:

    MaskedLanguageModeling   BERT's masked-token prediction            (pretraining)
    ElectraPretraining       generator + replaced-token detection      (pretraining)
    CausalLanguageModeling   next-token prediction, BertLMHeadModel    (pretraining)
    FineTuning               a classification, tagging or QA head      (fine-tuning)
    ContrastiveTraining      InfoNCE on query-passage pairs, SimCSE    (sentence embeddings)

``PRETRAINING`` names the objectives ``python -m tinymlm.train --objective`` offers.
"""

from tinymlm.objectives.base import MODEL_SIZES, Objective, bert_config, train_flops
from tinymlm.objectives.causal import CausalLanguageModeling
from tinymlm.objectives.contrastive import ContrastiveConfig, ContrastiveTraining
from tinymlm.objectives.electra import ElectraPretraining
from tinymlm.objectives.finetuning import FinetuneConfig, FineTuning
from tinymlm.objectives.pretraining import (
    Corpus,
    MaskedLanguageModeling,
    TrainConfig,
    build_corpus,
    make_collator,
)

PRETRAINING = {"mlm": MaskedLanguageModeling, "electra": ElectraPretraining,
               "clm": CausalLanguageModeling}

__all__ = [
    "MODEL_SIZES",
    "PRETRAINING",
    "CausalLanguageModeling",
    "ContrastiveConfig",
    "ContrastiveTraining",
    "Corpus",
    "ElectraPretraining",
    "FineTuning",
    "FinetuneConfig",
    "MaskedLanguageModeling",
    "Objective",
    "TrainConfig",
    "bert_config",
    "build_corpus",
    "make_collator",
    "train_flops",
]
