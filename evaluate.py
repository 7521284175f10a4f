"""Evaluate a checkpoint with the COCO metrics (pycocotools or faster-coco-eval).

python evaluate.py ckpt_path=outputs/train/<run>/checkpoints/last.ckpt
python evaluate.py ckpt_path=... data=coco eval.backend=faster_coco_eval

The checkout's entry point; an installed copy has the same command as `roi-gap-evaluate` (maskrcnn/cli.py).
"""

from maskrcnn.cli import evaluate as main

if __name__ == "__main__":
    main()
