"""A tiny, randomly initialised BLIP-2 saved to a folder vLLM loads as a model: no hub access.

Small enough that a CPU engine starts in about a minute, real enough that vLLM runs its vision
encoder, Q-Former and OPT decoder: the embeddings a producer sends are the Q-Former's projected
outputs, NUM_QUERY_TOKENS rows of the decoder's hidden size each.
"""

from __future__ import annotations

import sys
from pathlib import Path

NUM_QUERY_TOKENS = 32
HIDDEN = 128  # the decoder's: one embedding row is HIDDEN float32s
WORDS = ["<pad>", "</s>", "<unk>", "<image>", "Question:", "Answer:", "what", "is", "in", "the",
         "picture", "a", "cat", "dog", "red", "blue", "?"] + [f"w{i}" for i in range(47)]


def build(folder: Path, seed: int = 0, query_tokens: int = NUM_QUERY_TOKENS) -> Path:
    """QUERY_TOKENS: the embedding rows per image (a video's thousands, when set so)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        BlipImageProcessorPil,
        OPTConfig,
        PreTrainedTokenizerFast,
    )

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {w: i for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                        bos_token="</s>", unk_token="<unk>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_processor = BlipImageProcessorPil(size={"height": 32, "width": 32}, do_resize=True)
    processor = Blip2Processor(image_processor=image_processor, tokenizer=tokenizer,
                               num_query_tokens=query_tokens)
    config = Blip2Config(
        vision_config=Blip2VisionConfig(hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=1, num_attention_heads=2,
                                        image_size=32, patch_size=8),
        qformer_config=Blip2QFormerConfig(hidden_size=64, intermediate_size=128,
                                          num_hidden_layers=1, num_attention_heads=2,
                                          encoder_hidden_size=64, vocab_size=len(WORDS)),
        text_config=OPTConfig(vocab_size=len(WORDS), hidden_size=HIDDEN, ffn_dim=256,
                              num_hidden_layers=2, num_attention_heads=2,
                              word_embed_proj_dim=HIDDEN,
                              max_position_embeddings=max(512, 2 * query_tokens),
                              pad_token_id=0, bos_token_id=1, eos_token_id=1),
        num_query_tokens=query_tokens,
        image_token_index=vocab["<image>"],
    )
    model = Blip2ForConditionalGeneration(config).to(torch.float32)
    # Larger weights than the default init, so that greedy decoding follows the image strongly
    # (the end-to-end test checks that two images get different answers: an embedding that
    # arrived wrong would change the answer).
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8.0)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
