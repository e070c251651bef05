"""Byte-level BPE pre-tokenizers by their GGUF name (`tokenizer.ggml.pre`).

llama.cpp's converter names a Hugging Face tokenizer's pre-tokenizer by hashing what it does
to a test text, and llama.cpp splits text for each name with a sequence of patterns, each
applied to the pieces the one before left (the Hugging Face tokenizer.json files behind
those names chain `Split` pre-tokenizers the same way). The patterns below are those, as
llama.cpp's vocabulary code spells them; tests/test_llamacpp_vocab.py checks the rebuilt
tokenizers against llama.cpp's own expected ids for every vocabulary it ships.

Left out: names whose split llama.cpp does by hand-written code rather than by these
patterns (gemma4, sarvam-moe, whitespace, afmoe, kimi-k2, superbpe, tiny_aya), or only
approximates with a rewritten pattern whose original it does not quote (gpt-4o, llama4,
minimax-m2, granite-embed-multi).
"""

from __future__ import annotations

# ruff: noqa: E501  (the patterns are data, kept whole for comparison with their source)

# GPT-2's own split (tokenizers' ByteLevel regex): `default` when a GGUF names none
_GPT2_HF = (r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",)
# Mistral's tekken, as its tokenizer.json has it (llama.cpp rewrites the letter classes)
_TEKKEN = (
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"""
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|"""
    r"""\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
)
# LLAMA3, DBRX, SMAUG, CHATGLM4
_LLAMA3 = (
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
)
# JAIS2
_JAIS2 = (
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s{512}(?!\\S)|\\s{256}(?!\\S)|\\s{128}(?!\\S)|\\s{64}(?!\\S)|\\s{32}(?!\\S)|\\s{16}(?!\\S)|\\s{8}(?!\\S)|\\s{4}(?!\\S)|\\s{1,2}(?!\\S)|\\s{1}",
)
# DEEPSEEK_LLM
_DEEPSEEK_LLM = (
    "[\r\n]",
    "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
    "\\s?[!-/:-~！-／：-～‘-‟\u3000-。]+",
    "\\s+$",
    "[一-龥ࠀ-一가-\ud7ff]+",
    "\\p{N}+",
)
# DEEPSEEK3_LLM, HUNYUAN_DENSE, JOYAI_LLM, HY_V4
_DEEPSEEK3_LLM = (
    "\\p{N}{1,3}",
    "[一-龥\u3040-ゟ゠-ヿ]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
)
# SPARK2_5
_SPARK2_5 = (
    "\\p{N}{1,3}",
    "[一-龥\u3040-ゟ゠-ヿ]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+|[\r\n]|\\s+(?!\\S)|\\s+",
    "\\p{N}",
)
# YOUTU
_YOUTU = (
    "[가-힣ㄱ-ㆎ]+|[！…“”‘’—：；，、-〿︰-﹏]+|[ㄅ-ㄯ]+|[一-龥\u3040-ゟ゠-ヿ]+",
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
)
# DEEPSEEK_CODER
_DEEPSEEK_CODER = (
    "[\r\n]",
    "\\s?\\p{L}+",
    "\\s?\\p{P}+",
    "[一-龥ࠀ-一가-\ud7ff]+",
    "\\p{N}",
)
# FALCON
_FALCON = (
    "[\\p{P}\\$\\+<=>\\^~\\|`]+",
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)",
    "[0-9][0-9][0-9]",
)
# STARCODER, REFACT, COMMAND_R, SMOLLM, CODESHELL, EXAONE, MINERVA, MELLUM2
_STARCODER = (
    "\\p{N}",
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)",
)
# GPT2, MPT, OLMO, JAIS, TRILLION, GRANITE_DOCLING
_GPT2 = ("'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)",)
# STABLELM2, QWEN2, HUNYUAN, SOLAR_OPEN, GROK_2
_STABLELM2 = (
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
)
# QWEN35
_QWEN35 = (
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
)
# PORO, BLOOM, GPT3_FINNISH
_PORO = (" ?[^(\\s|.,!?…。，、।۔،)]+",)
# VIKING
_VIKING = (
    " ?[^(\\s|.,!?…。，、।۔،)]+",
    "\\p{N}",
)
# CHAMELEON
_CHAMELEON = (
    "<sentinel:[0-9]+>",
    "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
    "([\\t\\n]|    |  )",
    "\\p{N}",
    "[\\p{P}!-/:-@\\[-`{-~]",
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)",
)
# BAILINGMOE
_BAILINGMOE = (
    "'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+",
)
# SEED_CODER
_SEED_CODER = (
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1}| ?[^\\s\\p{L}\\p{N}\\r\\n]+|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
)
# UFAKZEKA
_UFAKZEKA = (
    "[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
)
# LAGUNA
_LAGUNA = (
    "[^\\n]+|[\\n]+",
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
)
# EXAONE_MOE
_EXAONE_MOE = (
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?(?:\\p{L}\\p{M}*(?: \\p{L}\\p{M}*)*)+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]?|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+",
)
# MINICPM5
_MINICPM5 = (
    "\\p{N}{1,3}",
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}+| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
)

# name -> (patterns, ignore_merges: a whole word in the vocabulary is one token)
PRE_TOKENIZERS: dict[str, tuple[tuple[str, ...], bool]] = {
    "default": (_GPT2_HF, False),
    "gpt2": (_GPT2_HF, False),
    "tekken": (_TEKKEN, True),
    "minicpm5": (_MINICPM5, True),
    "llama3": (_LLAMA3, True),
    "llama-v3": (_LLAMA3, True),
    "llama-bpe": (_LLAMA3, True),
    "falcon3": (_LLAMA3, True),
    "falcon-h1": (_LLAMA3, True),
    "pixtral": (_LLAMA3, True),
    "midm-2.0": (_LLAMA3, True),
    "lfm2": (_LLAMA3, True),
    "jina-v5-nano": (_LLAMA3, True),
    "deepseek-llm": (_DEEPSEEK_LLM, False),
    "deepseek-coder": (_DEEPSEEK_CODER, False),
    "deepseek-v3": (_DEEPSEEK3_LLM, False),
    "spark2_5": (_SPARK2_5, False),
    "youtu": (_YOUTU, True),
    "falcon": (_FALCON, False),
    "mpt": (_GPT2, False),
    "starcoder": (_STARCODER, False),
    "gpt-2": (_GPT2, False),
    "phi-2": (_GPT2, False),
    "jina-es": (_GPT2, False),
    "jina-de": (_GPT2, False),
    "gigachat": (_GPT2, False),
    "jina-v2-es": (_GPT2, False),
    "jina-v2-de": (_GPT2, False),
    "a.x-4.0": (_GPT2, False),
    "mellum": (_GPT2, False),
    "modern-bert": (_GPT2, False),
    "jais-2": (_JAIS2, False),
    "jina-v1-en": (_GPT2, False),
    "jina-v2-code": (_GPT2, False),
    "roberta-bpe": (_GPT2, False),
    "refact": (_STARCODER, False),
    "command-r": (_STARCODER, False),
    "qwen2": (_STABLELM2, False),
    "deepseek-r1-qwen": (_STABLELM2, False),
    "kormo": (_STABLELM2, False),
    "f2llmv2": (_STABLELM2, False),
    "qwen35": (_QWEN35, False),
    "stablelm2": (_STABLELM2, False),
    "olmo": (_GPT2, False),
    "dbrx": (_LLAMA3, False),
    "smaug-bpe": (_LLAMA3, False),
    "poro-chat": (_PORO, False),
    "chatglm-bpe": (_LLAMA3, False),
    "glm4": (_LLAMA3, True),
    "glm5": (_LLAMA3, True),
    "viking": (_VIKING, False),
    "jais": (_GPT2, False),
    "smollm": (_STARCODER, False),
    "codeshell": (_STARCODER, False),
    "bloom": (_PORO, False),
    "gpt3-finnish": (_PORO, False),
    "exaone": (_STARCODER, False),
    "exaone4": (_GPT2, False),
    "exaone-moe": (_EXAONE_MOE, False),
    "chameleon": (_CHAMELEON, False),
    "minerva-7b": (_STARCODER, False),
    "megrez": (_STABLELM2, False),
    "trillion": (_GPT2, False),
    "granite-docling": (_GPT2, False),
    "bailingmoe": (_BAILINGMOE, False),
    "bailingmoe2": (_BAILINGMOE, False),
    "llada-moe": (_BAILINGMOE, False),
    "seed-coder": (_SEED_CODER, False),
    "hunyuan": (_STABLELM2, False),
    "hunyuan-dense": (_DEEPSEEK3_LLM, False),
    "hy_v4": (_DEEPSEEK3_LLM, False),
    "joyai-llm": (_DEEPSEEK3_LLM, False),
    "ufakzeka": (_UFAKZEKA, False),
    "grok-2": (_STABLELM2, False),
    "laguna": (_LAGUNA, False),
    "solar-open": (_STABLELM2, False),
    "mellum2": (_STARCODER, False),
}
