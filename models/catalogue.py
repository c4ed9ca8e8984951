"""The model catalogue: every architecture shardtwin can shard, with the numbers of
its published configuration.

Rules:
- An ArchConfig is frozen data copied from one published config (`source` names it);
  nothing here is estimated. `published_params` is the published parameter count that
  the unit graph (models/graph.py) must reproduce within 2% (tested for every model).
- Names are the Hugging Face / paper names; short aliases (the seed's `--model-mix
  bert,whisper,vit`) resolve through ALIASES. A miss raises UnknownNameError that
  lists every known name.
- Multimodal models hold their towers as nested ArchConfigs (vision_tower, text_tower).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from shardtwin.errors import UnknownNameError
from shardtwin.vocab import ModelType, parse


@dataclass(frozen=True, slots=True)
class ArchConfig:
    """One architecture, numbers from its published config. 0 means "not applicable"."""

    name: str
    model_type: ModelType
    family: str                      # bert|roberta|distilbert|gpt2|t5|vit|deit|whisper|wav2vec2|clip|llama|resnet
    hidden_size: int
    num_layers: int                  # transformer blocks (encoder+decoder for enc-dec; bottlenecks for resnet)
    num_heads: int
    intermediate_size: int
    vocab_size: int = 0
    max_positions: int = 0           # text positions (decoder positions for whisper)
    type_vocab_size: int = 0
    layer_norm_eps: float = 1e-12
    activation: str = "gelu"         # gelu|gelu_new|relu|silu|quick_gelu
    norm_style: str = "post"         # post|pre|rms
    num_kv_heads: int = 0            # 0 -> num_heads (see __post_init__)
    tie_word_embeddings: bool = False
    image_size: int = 0
    patch_size: int = 0
    num_channels: int = 0
    num_mel_bins: int = 0
    max_source_positions: int = 0    # audio encoder positions (whisper: 1500)
    encoder_layers: int = 0
    decoder_layers: int = 0
    vision_tower: ArchConfig | None = None
    text_tower: ArchConfig | None = None
    projection_dim: int = 0
    published_params: int = 0
    source: str = ""
    # --- extra fields (beyond the shared contract) ---
    num_labels: int = 0              # image classifiers: ImageNet-1k
    head_dim: int = 0                # 0 -> hidden_size // num_heads
    relative_attention_buckets: int = 0   # t5
    conv_dim: int = 0                # wav2vec2 feature extractor channels
    conv_kernels: tuple[int, ...] = ()
    conv_strides: tuple[int, ...] = ()
    pos_conv_kernel: int = 0         # wav2vec2 positional conv
    pos_conv_groups: int = 0
    stage_blocks: tuple[int, ...] = ()    # resnet bottlenecks per stage
    aliases: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        # Invariant: num_kv_heads and head_dim are always concrete after construction.
        if self.num_kv_heads == 0 and self.num_heads:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        if self.head_dim == 0 and self.num_heads:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)

    @property
    def is_transformer(self) -> bool:
        return self.family != "resnet"


def _bert_like(name: str, family: str, **kw) -> ArchConfig:
    base = dict(model_type=ModelType.TEXT, family=family, hidden_size=768, num_layers=12, num_heads=12,
                intermediate_size=3072, vocab_size=30522, max_positions=512, type_vocab_size=2,
                layer_norm_eps=1e-12, activation="gelu", norm_style="post")
    base.update(kw)
    return ArchConfig(name=name, **base)


def _llama(name: str, hidden: int, layers: int, heads: int, ffn: int, **kw) -> ArchConfig:
    return ArchConfig(name=name, model_type=ModelType.TEXT, family="llama", hidden_size=hidden,
                      num_layers=layers, num_heads=heads, intermediate_size=ffn, vocab_size=32000,
                      activation="silu", norm_style="rms", tie_word_embeddings=False, **kw)


def _vit_like(name: str, family: str, **kw) -> ArchConfig:
    return ArchConfig(name=name, model_type=ModelType.VISION, family=family, hidden_size=768,
                      num_layers=12, num_heads=12, intermediate_size=3072, layer_norm_eps=1e-12,
                      activation="gelu", norm_style="pre", image_size=224, patch_size=16,
                      num_channels=3, num_labels=1000, **kw)


_CLIP_VISION = ArchConfig(
    name="clip-vit-base-patch32/vision", model_type=ModelType.VISION, family="clip", hidden_size=768,
    num_layers=12, num_heads=12, intermediate_size=3072, layer_norm_eps=1e-5, activation="quick_gelu",
    norm_style="pre", image_size=224, patch_size=32, num_channels=3, published_params=87_849_216,
    source="openai/clip-vit-base-patch32 config.json vision_config")
_CLIP_TEXT = ArchConfig(
    name="clip-vit-base-patch32/text", model_type=ModelType.TEXT, family="clip", hidden_size=512,
    num_layers=12, num_heads=8, intermediate_size=2048, vocab_size=49408, max_positions=77,
    layer_norm_eps=1e-5, activation="quick_gelu", norm_style="pre", published_params=63_428_096,
    source="openai/clip-vit-base-patch32 config.json text_config")


def _catalogue() -> tuple[ArchConfig, ...]:
    return (
        _bert_like("bert-base-uncased", "bert", published_params=109_482_240, aliases=("bert",),
                   source="google-bert/bert-base-uncased config.json; HF BertModel count incl. pooler"),
        _bert_like("roberta-base", "roberta", vocab_size=50265, max_positions=514, type_vocab_size=1,
                   layer_norm_eps=1e-5, published_params=124_645_632, aliases=("roberta",),
                   source="FacebookAI/roberta-base config.json; HF RobertaModel count incl. pooler"),
        _bert_like("distilbert-base-uncased", "distilbert", num_layers=6, type_vocab_size=0,
                   published_params=66_362_880, aliases=("distilbert",),
                   source="distilbert/distilbert-base-uncased config.json; HF DistilBertModel count "
                          "(the pooler unit models the classifier's pre_classifier dense, +0.59M)"),
        _bert_like("all-MiniLM-L6-v2", "bert", hidden_size=384, num_layers=6, intermediate_size=1536,
                   published_params=22_713_216, aliases=("minilm", "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2"),
                   source="sentence-transformers/all-MiniLM-L6-v2 config.json; BertModel count incl. pooler"),
        ArchConfig(name="gpt2", model_type=ModelType.TEXT, family="gpt2", hidden_size=768, num_layers=12,
                   num_heads=12, intermediate_size=3072, vocab_size=50257, max_positions=1024,
                   layer_norm_eps=1e-5, activation="gelu_new", norm_style="pre", tie_word_embeddings=True,
                   published_params=124_439_808, aliases=("gpt",),
                   source="openai-community/gpt2 config.json; HF GPT2LMHeadModel count (tied head)"),
        ArchConfig(name="t5-small", model_type=ModelType.TEXT, family="t5", hidden_size=512, num_layers=12,
                   num_heads=8, intermediate_size=2048, vocab_size=32128, max_positions=512,
                   layer_norm_eps=1e-6, activation="relu", norm_style="rms", tie_word_embeddings=True,
                   encoder_layers=6, decoder_layers=6, relative_attention_buckets=32,
                   published_params=60_506_624, aliases=("t5",),
                   source="google-t5/t5-small config.json; HF T5ForConditionalGeneration count (tied head)"),
        _llama("llama-7b", 4096, 32, 32, 11008, max_positions=2048, layer_norm_eps=1e-6,
               published_params=6_738_415_616, aliases=("llama", "llama7b"),
               source="huggyllama/llama-7b config.json (LLaMA-1 7B); HF LlamaForCausalLM count"),
        _llama("llama-13b", 5120, 40, 40, 13824, max_positions=2048, layer_norm_eps=1e-6,
               published_params=13_015_864_320, aliases=("llama13b",),
               source="huggyllama/llama-13b config.json (LLaMA-1 13B); HF LlamaForCausalLM count"),
        _llama("llama-70b", 8192, 80, 64, 28672, num_kv_heads=8, max_positions=4096, layer_norm_eps=1e-5,
               published_params=68_976_648_192, aliases=("llama70b",),
               source="meta-llama/Llama-2-70b-hf config.json (grouped-query attention, 8 kv heads)"),
        _vit_like("vit-base-patch16-224", "vit", published_params=86_567_656, aliases=("vit",),
                  source="google/vit-base-patch16-224 config.json; HF ViTForImageClassification count"),
        _vit_like("deit-base-distilled-patch16-224", "deit", published_params=87_338_192,
                  aliases=("deit",),
                  source="facebook/deit-base-distilled-patch16-224 config.json; "
                         "HF DeiTForImageClassificationWithTeacher count (cls + distillation heads)"),
        ArchConfig(name="resnet-50", model_type=ModelType.VISION, family="resnet", hidden_size=2048,
                   num_layers=16, num_heads=0, intermediate_size=0, layer_norm_eps=1e-5, activation="relu",
                   norm_style="post", image_size=224, num_channels=3, num_labels=1000,
                   stage_blocks=(3, 4, 6, 3), published_params=25_557_032, aliases=("resnet", "resnet50"),
                   source="torchvision resnet50 / microsoft/resnet-50 (bottleneck v1.5), 25.56M"),
        ArchConfig(name="whisper-tiny", model_type=ModelType.AUDIO, family="whisper", hidden_size=384,
                   num_layers=8, num_heads=6, intermediate_size=1536, vocab_size=51865, max_positions=448,
                   layer_norm_eps=1e-5, activation="gelu", norm_style="pre", tie_word_embeddings=True,
                   num_mel_bins=80, max_source_positions=1500, encoder_layers=4, decoder_layers=4,
                   published_params=37_760_640, aliases=("whisper",),
                   source="openai/whisper-tiny config.json; HF WhisperForConditionalGeneration count "
                          "(37.76M; the paper's table rounds to 39M)"),
        ArchConfig(name="wav2vec2-base", model_type=ModelType.AUDIO, family="wav2vec2", hidden_size=768,
                   num_layers=12, num_heads=12, intermediate_size=3072, layer_norm_eps=1e-5,
                   activation="gelu", norm_style="post", conv_dim=512,
                   conv_kernels=(10, 3, 3, 3, 3, 2, 2), conv_strides=(5, 2, 2, 2, 2, 2, 2),
                   pos_conv_kernel=128, pos_conv_groups=16, published_params=94_371_712,
                   aliases=("wav2vec2", "wav2vec"),
                   source="facebook/wav2vec2-base config.json; HF Wav2Vec2Model count (paper: 95M "
                          "incl. the pre-training quantizer)"),
        ArchConfig(name="clip-vit-base-patch32", model_type=ModelType.MULTIMODAL, family="clip",
                   hidden_size=768, num_layers=24, num_heads=12, intermediate_size=3072,
                   vocab_size=49408, max_positions=77, layer_norm_eps=1e-5, activation="quick_gelu",
                   norm_style="pre", image_size=224, patch_size=32, num_channels=3,
                   vision_tower=_CLIP_VISION, text_tower=_CLIP_TEXT, projection_dim=512,
                   published_params=151_277_313, aliases=("clip",),
                   source="openai/clip-vit-base-patch32 config.json; HF CLIPModel count"),
    )


MODELS: dict[str, ArchConfig] = {m.name: m for m in _catalogue()}

ALIASES: dict[str, str] = {
    alias.lower(): m.name for m in MODELS.values() for alias in (m.name, *m.aliases)
}


def get_model(name: str | ArchConfig) -> ArchConfig:
    """The ArchConfig for a name or alias (case-insensitive); an ArchConfig passes through."""
    if isinstance(name, ArchConfig):
        return name
    key = str(name).strip().lower()
    if key not in ALIASES:
        raise UnknownNameError("model", name, list(MODELS))
    return MODELS[ALIASES[key]]


def list_models(model_type: ModelType | str | None = None) -> list[ArchConfig]:
    """Catalogue entries in catalogue order, optionally of one model type."""
    if model_type is None:
        return list(MODELS.values())
    wanted = parse(ModelType, model_type, "model type")
    return [m for m in MODELS.values() if m.model_type == wanted]


def with_overrides(arch: ArchConfig, **changes) -> ArchConfig:
    """A copy of `arch` with some fields changed (for what-if experiments and tests).
    Derived fields follow their inputs unless given: head_dim from hidden_size/num_heads,
    num_kv_heads from num_heads (when the original had no grouped-query attention)."""
    if "head_dim" not in changes and {"hidden_size", "num_heads"} & changes.keys():
        changes["head_dim"] = 0
    if "num_kv_heads" not in changes and "num_heads" in changes and arch.num_kv_heads == arch.num_heads:
        changes["num_kv_heads"] = 0
    return replace(arch, **changes)
