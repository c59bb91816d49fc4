"""Data for AT-RL: the synthetic VisualMath task, answer grading and rewards, benchmark loaders.

(Module docstring to be completed: sections below are filled in by their owners.)
"""

# --------------------------------------------------------------------------------------------------
# Synthetic VisualMath
# --------------------------------------------------------------------------------------------------

# (section: synthetic VisualMath — make_visualmath, locate_perception)

# --------------------------------------------------------------------------------------------------
# Grading and rewards
# --------------------------------------------------------------------------------------------------

# (section: grading — extract_answer, is_correct, compute_reward)

# --------------------------------------------------------------------------------------------------
# Benchmark loaders
# --------------------------------------------------------------------------------------------------

# (section: loaders — load_benchmark, format_question)
