"""tinymlm: masked language modeling from scratch (autograd, BERT, kernels, lessons)."""

__version__ = "0.1.0"

from tinymlm.autograd import Function, Tensor, is_grad_enabled, no_grad  # noqa: E402
from tinymlm.backend import manual_seed  # noqa: E402
from tinymlm.ops import concatenate, gather, stack, where  # noqa: E402

__all__ = [
    "Function",
    "Tensor",
    "concatenate",
    "gather",
    "is_grad_enabled",
    "manual_seed",
    "no_grad",
    "stack",
    "where",
]


def __getattr__(name):
    # The model and tokenizer are imported on first use, so `import tinymlm` stays light.
    if name in ("BertConfig", "BertModel", "BertForMaskedLM"):
        from tinymlm.nn import bert

        return getattr(bert, name)
    if name in ("BertForSequenceClassification", "BertForTokenClassification",
                "BertForQuestionAnswering"):
        from tinymlm.nn import heads

        return getattr(heads, name)
    if name == "BertLMHeadModel":
        from tinymlm.nn.causal import BertLMHeadModel

        return BertLMHeadModel
    if name == "BertTokenizer":
        from tinymlm.tokenizer import BertTokenizer

        return BertTokenizer
    if name == "SentenceEncoder":
        from tinymlm.sentence_encoder import SentenceEncoder

        return SentenceEncoder
    raise AttributeError(f"module 'tinymlm' has no attribute {name!r}")
