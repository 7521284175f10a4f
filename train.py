"""Train Mask R-CNN with the RoI extractor named by the `roi` config.

python train.py                                  # r18_fpn, roi=align, built-in shapes data
python train.py roi=pool model=r18_c5            # another RoI op / model
python train.py experiment=coco_r50_fpn_1x       # the paper's schedule on COCO, 8 GPUs
python train.py -m roi=pool,align seed=0,1       # a sweep (Hydra multirun)
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from maskrcnn.plugins import import_searchpath_modules
from maskrcnn.resolvers import register_resolvers
from maskrcnn.training import train

register_resolvers(exit_on_error=True)  # before @hydra.main composes the config


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    import_searchpath_modules(HydraConfig.get().searchpath)  # a user's extractor module beside their configs
    train(cfg)


if __name__ == "__main__":
    main()
