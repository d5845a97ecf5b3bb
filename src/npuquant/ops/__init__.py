"""The op families. Each package holds the public functions and their torch custom ops
(``__init__``), the pure-torch golden (``reference``) and the compiled CPU path (``native``)."""
