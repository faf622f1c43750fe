# Unadjusted mediation: T -> M -> Y and T -> Y, with no confounder node. This is what classic activation
# patching assumes; estimators run with it adjust for nothing ("before topic adjustment").
graph [
  directed 1
  node [ id 1 label "T" ]
  node [ id 2 label "M" ]
  node [ id 3 label "Y" ]
  edge [ source 1 target 2 ]
  edge [ source 1 target 3 ]
  edge [ source 2 target 3 ]
]
