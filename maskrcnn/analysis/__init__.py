"""Analysis tools of the RoI-gap experiment, each a `python -m maskrcnn.analysis.<module>` command.

gap_report           one paper-style table, roi_gap.json and a chart from runs' metrics.json files
                     (its parts: gap_runs, gap_stats, gap_chart, paper_table2; variants: how each is drawn)
misalignment_probe   how far from the true bin centre each RoI op looks, per stride
sampling_figure      where RoIPool, RoIWarp and RoIAlign sample one RoI on the feature grid
compare_predictions  two runs' predicted masks beside the ground truth on fixed val images (loads via trained_run)
archive_run          copies finished runs for committing: no checkpoints, TensorBoard scalars and PR curves only
pr_curves            a run's TensorBoard PR curves (train.py / evaluate.py), read back and drawn
"""
