"""Operations plane: MLflow tracking, the model registry, the promotion gate and the serving router."""
