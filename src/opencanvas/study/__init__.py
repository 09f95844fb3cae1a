"""studies: the paper's experiments as one resumable command (`opencanvas study run|plan`).

A study file names a base subset, the stages' settings, the axes that vary and one evaluation;
each cell is an ordinary training run (train/) evaluated by sample/, and the cells share images,
captions, latents and components. See runner.py for the directory layout. Import from the
modules: `study.spec` (load_study, StudySpec, StudyError), `study.runner` (run_study),
`study.plan` (plan_commands), `study.fractions` (in_fraction, fraction_keys).
"""
