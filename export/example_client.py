"""Embed aligned face crops with a running TF-Serving and print their cosine similarities.

    python export/example_client.py crop1.jpg crop2.jpg                      # REST, embed_jpeg
    python export/example_client.py --pixels crop1.png crop2.png             # REST, serving_default
    python export/example_client.py --grpc localhost:8500 crop1.jpg crop2.jpg

Crops must already be aligned (ArcFace 5-point template) at the export's input size; see export/README.md.
REST needs only NumPy (and OpenCV for --pixels); gRPC needs `pip install tensorflow-serving-api grpcio`.
"""

import argparse
import sys

import numpy as np

from tfface.serving import client


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", help="aligned crops (JPEG/PNG)")
    p.add_argument("--rest", default="localhost:8501", help="REST host:port (default %(default)s)")
    p.add_argument("--grpc", default=None, help="gRPC host:port; uses gRPC instead of REST when given")
    p.add_argument("--model", default="tfface", help="model name in models.config (default %(default)s)")
    p.add_argument("--version", type=int, default=None, help="model version (default: the server's latest)")
    p.add_argument("--pixels", action="store_true",
                   help="decode locally and send uint8 pixels to serving_default instead of the files to embed_jpeg")
    args = p.parse_args(argv)

    if args.pixels:
        import cv2

        images = [cv2.imread(f, cv2.IMREAD_COLOR) for f in args.files]
        if any(im is None for im in images):
            sys.exit("could not read every file")
        inputs = {"images": np.stack([im[..., ::-1] for im in images])}  # BGR → RGB
    else:
        files = []
        for f in args.files:
            with open(f, "rb") as fh:
                files.append(fh.read())
        inputs = {"jpeg_bytes": files}

    if args.grpc:
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        request = client.grpc_request(**inputs, model_name=args.model, version=args.version)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(args.grpc))
        emb = client.parse_grpc_response(stub.Predict(request, timeout=30.0), expected_n=len(args.files))
    else:
        url = client.predict_url(args.rest, args.model, args.version)
        emb = client.parse_rest_response(client.post(url, client.rest_request(**inputs)), expected_n=len(args.files))

    print(f"embeddings: {emb.shape[0]} x {emb.shape[1]}")
    sims = emb @ emb.T
    for name, row in zip(args.files, sims, strict=True):
        print(f"{name:>30s} " + " ".join(f"{s:6.3f}" for s in row))


if __name__ == "__main__":
    main()
