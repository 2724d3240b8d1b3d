"""Training internals shared by train_nets.py, train_nets_mgpu_new.py and eval_ckpt_file.py."""
