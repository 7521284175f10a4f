"""Train Mask R-CNN with the RoI extractor named by the `roi` config.

python train.py                                  # r18_fpn, roi=align, built-in shapes data
python train.py roi=pool model=r18_c5            # another RoI op / model
python train.py experiment=coco_r50_fpn_1x       # the paper's schedule on COCO, 8 GPUs
python train.py -m roi=pool,align seed=0,1       # a sweep (Hydra multirun)

The checkout's entry point; an installed copy has the same command as `roi-gap-train` (maskrcnn/cli.py).
"""

from maskrcnn.cli import train as main

if __name__ == "__main__":
    main()
