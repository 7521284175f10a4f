"""Train Mask R-CNN with the RoI extractor named by the `roi` config.

python train.py                                  # r18_fpn, roi=align, built-in shapes data
python train.py roi=pool model=r18_c5            # another RoI op / model
python train.py experiment=coco_r50_fpn_1x       # the paper's schedule on COCO, 8 GPUs
python train.py -m roi=pool,align seed=0,1       # a sweep (Hydra multirun)
"""

import hydra
from omegaconf import DictConfig

from maskrcnn.resolvers import register_resolvers
from maskrcnn.training import train

register_resolvers()  # before @hydra.main composes the config


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
