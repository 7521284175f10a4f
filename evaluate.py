"""Evaluate a checkpoint with the COCO metrics (pycocotools or faster-coco-eval).

python evaluate.py ckpt_path=outputs/train/<run>/checkpoints/last.ckpt
python evaluate.py ckpt_path=... data=coco eval.backend=faster_coco_eval
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from maskrcnn.evaluate_checkpoint import evaluate
from maskrcnn.plugins import import_searchpath_modules
from maskrcnn.resolvers import register_resolvers

register_resolvers()  # before @hydra.main composes the config


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    import_searchpath_modules(HydraConfig.get().searchpath)  # a user's extractor module beside their configs
    evaluate(cfg)


if __name__ == "__main__":
    main()
