"""Random-weight components of the real Qwen-Image architectures, built in code (no download).

`source: random` uses the tiny configs below (tests, CI: a 64x64, 2-step call in well under a second
on a CPU); `source: random-full` uses the published full-size configs (GPU benchmarks without weights).
Every module is created after `torch.manual_seed(...)`, so the same settings give the same weights.

The tokenizer is a byte-level BPE without merges (256 byte tokens) plus the Qwen special tokens,
built with the `tokenizers` library: every string tokenizes, nothing is downloaded.
"""

from __future__ import annotations

from functools import lru_cache

import torch

# Qwen chat and vision special tokens the pipelines and processors look up by name.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>", "<|vision_pad|>",
]

# A minimal Qwen chat template (the 2.1 pipeline tokenizes its system message with it).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@lru_cache(maxsize=1)
def build_tokenizer():
    """A Qwen2 fast tokenizer over a local byte-level BPE vocabulary (no merges, no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    alphabet = ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS,
        chat_template=CHAT_TEMPLATE,
        model_max_length=32768,
    )
    return fast


def _without_video(processor_class):
    """A processor subclass that accepts `video_processor=None`.

    Video processors need torchvision, which this project does not install; the pipelines only pass
    images, so the video slot stays empty instead of failing the processor's class check.
    """

    class ImageOnlyProcessor(processor_class):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument is None and argument_name == "video_processor":
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    ImageOnlyProcessor.__name__ = ImageOnlyProcessor.__qualname__ = processor_class.__name__
    return ImageOnlyProcessor


def _token_ids(tokenizer) -> dict[str, int]:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    return {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }


def _special_ids(tokenizer) -> dict[str, int]:
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return {"bos_token_id": pad, "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"), "pad_token_id": pad}


def _vocab_size(tokenizer) -> int:
    return ((len(tokenizer) + 63) // 64) * 64


# -- family qwen-image (Qwen-Image 2512 + Qwen-Image-Edit 2511) ---------------------------------

def qwen_image_components(full: bool = False, seed: int = 0, text_encoder: bool = True,
                          layers: int | None = None) -> dict:
    """Components shared by QwenImagePipeline and QwenImageEditPlusPipeline (plus `processor`).

    `text_encoder=False` leaves the Qwen2.5-VL out (`None`): the engine then uses the one already
    in `tools.shared_models`; the other modules are seeded one by one, so they do not change.
    `layers` (full size only) keeps every width and cuts the transformer, the text encoder and the
    vision tower to that many blocks: the real shapes at a fraction of the cost (shape tests)."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = build_tokenizer()
    ids = _token_ids(tokenizer)
    if full:
        # The published configs of Qwen/Qwen-Image: diffusers' class defaults are the released
        # transformer (20.4B) and VAE; the text encoder is Qwen2.5-VL-7B's (minus the big vocabulary).
        transformer_kw, vae_kw = {}, {}
        text_kw = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, rope_scaling={"mrope_section": [16, 24, 24], "rope_type": "default",
                                                            "type": "default"}, rope_theta=1000000.0)
        vision_kw = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                         fullatt_block_indexes=[7, 15, 23, 31], window_size=112)
        hidden = 3584
        if layers:
            transformer_kw["num_layers"] = text_kw["num_hidden_layers"] = vision_kw["depth"] = layers
            vision_kw["fullatt_block_indexes"] = [layers - 1]  # block 0 windowed (if 2+), the last full
            vae_kw["num_res_blocks"] = 1  # the VAE's widths and stages kept: one residual block a stage
    else:
        transformer_kw = dict(patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16,
                              num_attention_heads=2, joint_attention_dim=16, guidance_embeds=False,
                              axes_dims_rope=(8, 4, 4))
        vae_kw = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[False, True])
        text_kw = dict(hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=2, rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default",
                                                            "type": "default"}, rope_theta=1000000.0)
        vision_kw = dict(depth=2, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16)
        hidden = 16
    if not full:
        vae_kw.update(latents_mean=[0.0] * vae_kw["z_dim"], latents_std=[1.0] * vae_kw["z_dim"])
    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(**transformer_kw)
    torch.manual_seed(seed)
    vae = AutoencoderKLQwenImage(**vae_kw)
    torch.manual_seed(seed)
    config = Qwen2_5_VLConfig(
        text_config={**text_kw, "vocab_size": _vocab_size(tokenizer), **_special_ids(tokenizer)},
        vision_config=vision_kw,
        hidden_size=hidden, vocab_size=_vocab_size(tokenizer), **ids,
    )
    text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval() if text_encoder else None
    # The PIL image processor: the default one needs torchvision, which this project does not require.
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=(28 * 28 * 4) if not full else 56 * 56, max_pixels=(64 * 64 * 4) if not full else 28 * 28 * 1280
    )
    processor = _without_video(Qwen2VLProcessor)(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256, max_image_seq_len=8192, base_shift=0.5, max_shift=0.9, use_dynamic_shifting=True,
        shift_terminal=0.02, time_shift_type="exponential",
    )
    return {"transformer": transformer, "vae": vae, "scheduler": scheduler, "text_encoder": text_encoder,
            "tokenizer": tokenizer, "processor": processor}


# -- family qwen-image-2.1 ----------------------------------------------------------------------

def qwen_image_21_components(full: bool = False, seed: int = 0, text_encoder: bool = True,
                             layers: int | None = None) -> dict:
    """Components of QwenImage21Pipeline; `text_encoder` and `layers` as in `qwen_image_components`."""
    from diffusers import AutoencoderKLQwenImage21, FlowMatchEulerDiscreteScheduler, QwenImage21Transformer2DModel
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = build_tokenizer()
    ids = _token_ids(tokenizer)
    if full:
        # Qwen-Image 2.1: diffusers' class defaults are the released transformer and VAE; the text
        # encoder has Qwen3-VL-8B's shapes (minus the big vocabulary).
        z_dim, text_hidden = 64, 4096
        transformer_kw, vae_kw = {}, {}
        text_kw = dict(hidden_size=text_hidden, intermediate_size=12288, num_hidden_layers=36,
                       num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                       rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                                        "mrope_section": [24, 20, 20]})
        vision_kw = dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16,
                         out_hidden_size=text_hidden, patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                         num_position_embeddings=2304, deepstack_visual_indexes=[8, 16, 24])
        if layers:
            transformer_kw["num_layers"] = text_kw["num_hidden_layers"] = vision_kw["depth"] = layers
            vision_kw["deepstack_visual_indexes"] = [layers - 1]
            vae_kw["num_res_blocks"] = 1
    else:
        z_dim, text_hidden = 8, 16
        transformer_kw = dict(patch_size=1, in_channels=z_dim, out_channels=z_dim, num_layers=2,
                              attention_head_dim=16, num_attention_heads=2, context_in_dim=text_hidden,
                              mlp_ratio=2, axes_dims_rope=(4, 6, 6))
        vae_kw = dict(base_dim=4, decoder_base_dim=4, dim_mult=[1, 1, 1, 1, 1], num_res_blocks=1, attn_scales=[],
                      temperal_downsample=[False, True, True, True])
        text_kw = dict(hidden_size=text_hidden, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=2, head_dim=8,
                       rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [1, 1, 2]})
        vision_kw = dict(depth=2, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=text_hidden,
                         patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                         deepstack_visual_indexes=[0])
    torch.manual_seed(seed)
    transformer = QwenImage21Transformer2DModel(**transformer_kw)
    torch.manual_seed(seed)
    if not full:
        vae_kw.update(z_dim=z_dim, latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim)
    vae = AutoencoderKLQwenImage21(**vae_kw)
    torch.manual_seed(seed)
    config = Qwen3VLConfig(
        text_config={**text_kw, "vocab_size": _vocab_size(tokenizer), **_special_ids(tokenizer)},
        vision_config=vision_kw, image_token_id=ids["image_token_id"], video_token_id=ids["video_token_id"],
        vision_start_token_id=ids["vision_start_token_id"], vision_end_token_id=ids["vision_end_token_id"],
    )
    text_encoder = Qwen3VLForConditionalGeneration(config).eval() if text_encoder else None
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=16, merge_size=2, temporal_patch_size=2,
        # The pipeline resizes every condition image to its area itself (`output_resolution`^2, rounded
        # to 32: a 16:9 image at 1024 is 1376x768 = 1.06 MP); a lower cap here made the processor shrink
        # it again, emit fewer image tokens than the VAE latents and fail in the transformer.
        min_pixels=32 * 32, max_pixels=(512 * 512) if not full else 4096 * 4096,
    )
    processor = _without_video(Qwen3VLProcessor)(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
    scheduler = FlowMatchEulerDiscreteScheduler()
    return {"transformer": transformer, "vae": vae, "scheduler": scheduler, "text_encoder": text_encoder,
            "processor": processor}
