"""The torch-free runtime: answer (image, question) pairs from an exported folder on one CPU core.

Imports onnxruntime, numpy, tokenizers and Pillow only (a test checks that torch never loads):

    from picovlm.runtime import Runtime
    runtime = Runtime.load("exported/", threads=1)
    print(runtime.answer("cat.png", "Describe the image.", max_new_tokens=64))
    print(runtime.answer("cat.png", "Describe the image.", GenerationConfig(repetition_penalty=1.2)))
    for piece in runtime.stream("cat.png", "Describe the image."):
        print(piece, end="", flush=True)
"""

from picovlm.generation import GenerationConfig
from picovlm.runtime.runtime import ImageError, Runtime, open_image, sample_next_token

__all__ = [
    "GenerationConfig",
    "ImageError",
    "Runtime",
    "open_image",
    "sample_next_token",
]
