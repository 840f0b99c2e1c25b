"""Model plane: the teacher, soft labels, students, their training, losses and evaluation."""
