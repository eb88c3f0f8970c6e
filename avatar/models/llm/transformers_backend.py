"""Chat LLM with Hugging Face transformers: the GPU path (bf16 on CUDA), fp32 on the CPU otherwise.

torch and transformers are imported only when this backend is chosen, so the CPU install needs neither.
Models load from local files only: a Hugging Face model folder, a GGUF file (read through the ``gguf``
package), or a preset name whose GGUF ships in a pip package.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator

from avatar.config import LLMConfig
from avatar.errors import ConfigError, ModelMissingError, StageError
from avatar.models.llm.base import acquire_unless_cancelled, plain_messages
from avatar.models.weights import LLM_PRESETS, llm_gguf

INSTALL = "pip install torch==2.13.0 transformers==5.17.0 accelerate==1.15.0 gguf==0.19.0"


def _imports():
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise ModelMissingError(f"the transformers backend needs {exc.name}. Fix: {INSTALL}") from None
    return torch, transformers


def _load(tf, path: Path, dtype):
    # transformers reads a GGUF in Python (vocabulary and tensors): about 50 s for SmolLM2-135M on two
    # cores. A quantised GGUF model cannot be saved back as safetensors, so it is read at every start;
    # give a Hugging Face model folder for quick starts on a GPU.
    folder, extra = (path.parent, {"gguf_file": path.name}) if path.is_file() else (path, {})
    return (tf.AutoTokenizer.from_pretrained(folder, local_files_only=True, **extra),
            tf.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype, **extra))


class TransformersLLM:
    # One generation at a time (the lock below); more sessions queue fairly in the runtime.
    max_concurrent = 1

    def __init__(self, cfg: LLMConfig):
        torch, tf = _imports()
        path = llm_gguf(cfg.model) if cfg.model in LLM_PRESETS else Path(cfg.model).expanduser()
        if not path.exists():
            raise ConfigError(f"transformers model '{cfg.model}' is neither a preset ({', '.join(LLM_PRESETS)}) "
                              "nor a local model folder or GGUF file; models are never downloaded at run time")
        if cfg.device not in ("cpu", "cuda", "auto"):
            raise ConfigError(f"llm.device must be 'cpu', 'cuda' or 'auto', got '{cfg.device}'")
        self.device = "cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        if self.device == "cpu":
            torch.set_num_threads(cfg.n_threads)
        try:
            self.tokenizer, self.model = _load(tf, path, dtype)
        except ImportError as exc:  # gguf or accelerate missing
            raise ModelMissingError(f"loading {path} needs another package ({exc}). Fix: {INSTALL}") from None
        except (OSError, ValueError) as exc:
            raise ModelMissingError(f"cannot load transformers model from {path}: {exc}") from None
        self.model.to(self.device).eval()
        self.context_tokens = cfg.context_tokens
        self._torch, self._tf = torch, tf
        self._lock = threading.Lock()  # one generation at a time keeps GPU memory use bounded and predictable

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def stream_chat(
        self,
        messages: list[dict],
        *,
        max_tokens: int = 256,
        temperature: float = 0.7,
        cancel: threading.Event | None = None,
        conversation: str | None = None,  # no prompt cache kept between calls: unused
    ) -> Iterator[str]:
        torch, tf = self._torch, self._tf
        stop = threading.Event()  # set when the caller cancels or stops reading

        class Stop(tf.StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                flag = stop.is_set() or (cancel is not None and cancel.is_set())
                return torch.full((input_ids.shape[0],), flag, dtype=torch.bool, device=input_ids.device)

        if not acquire_unless_cancelled(self._lock, cancel):
            return
        failure: list[BaseException] = []
        worker = None
        try:
            inputs = self.tokenizer.apply_chat_template(
                plain_messages(messages), add_generation_prompt=True, return_tensors="pt", return_dict=True
            ).to(self.device)
            streamer = tf.TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
            sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}

            def generate():
                try:
                    with torch.inference_mode():
                        self.model.generate(
                            **inputs, max_new_tokens=max_tokens, streamer=streamer,
                            stopping_criteria=tf.StoppingCriteriaList([Stop()]),
                            pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id, **sampling,
                        )
                except BaseException as exc:  # surfaced in the reading thread below
                    failure.append(exc)
                    streamer.end()  # unblocks the reader

            worker = threading.Thread(target=generate, name="llm-generate", daemon=True)
            worker.start()
            for piece in streamer:
                if cancel is not None and cancel.is_set():
                    break
                if piece:
                    yield piece
        finally:
            stop.set()
            if worker is not None:
                worker.join()
            self._lock.release()
        if failure:
            raise StageError(f"the LLM failed while generating: {failure[0]!r}") from failure[0]
