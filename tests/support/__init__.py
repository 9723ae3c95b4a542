"""What the tests share: fake datasets in the Hub's on-disk layout (``fake_data``), the float64
oracle and input makers (``oracle``), and scripts the tests run in subprocesses."""
