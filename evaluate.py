"""Evaluate a checkpoint with the COCO metrics (pycocotools or faster-coco-eval).

python evaluate.py ckpt_path=outputs/train/<run>/checkpoints/last.ckpt
python evaluate.py ckpt_path=... data=coco eval.backend=faster_coco_eval
"""

import hydra
from omegaconf import DictConfig

from maskrcnn.evaluate_checkpoint import evaluate
from maskrcnn.resolvers import register_resolvers

register_resolvers()  # before @hydra.main composes the config


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
