"""Neural-network building blocks: modules, layers, the functional API and BERT."""

from tinymlm.nn import functional
from tinymlm.nn.heads import (
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
)
from tinymlm.nn.layers import Dropout, Embedding, LayerNorm, Linear
from tinymlm.nn.module import Module, ModuleList, Parameter

__all__ = [
    "BertForQuestionAnswering",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "Dropout",
    "Embedding",
    "LayerNorm",
    "Linear",
    "Module",
    "ModuleList",
    "Parameter",
    "functional",
]
